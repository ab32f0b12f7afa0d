//! Picks each row's topic and routing key from the configured routes: first match wins.

use crate::{
    config::{RelayConfig, RouteConfig, TopicTarget},
    message::{OutboxEvent, glob_matches, render_template},
};

/// Where one event goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub route: String,
    pub topic: String,
    pub routing_key: String,
}

pub struct Router {
    routes: Vec<(RouteConfig, String)>,
}

impl Router {
    /// Prepares the routes, each with its effective routing-key template.
    pub fn new(config: &RelayConfig) -> Self {
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let template = route.routing_key.clone().unwrap_or_else(|| {
                    match config.topics.get(&route.topic).map(|t| &t.target) {
                        Some(TopicTarget::Rabbitmq(rabbitmq)) => rabbitmq.routing_key.clone(),
                        Some(TopicTarget::Nats(nats)) => nats.subject.clone(),
                        _ => String::new(),
                    }
                });
                (route.clone(), template)
            })
            .collect();
        Self { routes }
    }

    pub fn route(&self, event: &OutboxEvent) -> Option<Destination> {
        self.routes
            .iter()
            .find(|(route, _)| matches(route, event))
            .map(|(route, template)| Destination {
                route: route.name.clone(),
                topic: route.topic.clone(),
                routing_key: render_template(template, event),
            })
    }
}

fn matches(route: &RouteConfig, event: &OutboxEvent) -> bool {
    route
        .aggregate_type
        .as_deref()
        .is_none_or(|pattern| glob_matches(pattern, &event.aggregate_type))
        && route
            .event_type
            .as_deref()
            .is_none_or(|pattern| glob_matches(pattern, &event.event_type))
}
