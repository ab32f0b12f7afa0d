//! TLS from the Secret's URL, against private servers that only take TLS clients: for each
//! client (PostgreSQL, RabbitMQ, NATS, Redis) a `ferry relay` trusts the test's own certificate
//! authority and delivers every event; without that trust it refuses the server's certificate,
//! publishes nothing and says so in `/status`, with no password in its status or its log.

mod support;

#[path = "tls/harness.rs"]
mod harness;
#[path = "tls/nats.rs"]
mod nats_tls;
#[path = "tls/postgres.rs"]
mod postgres_tls;
#[path = "tls/rabbitmq.rs"]
mod rabbitmq_tls;
#[path = "tls/redis.rs"]
mod redis_tls;
