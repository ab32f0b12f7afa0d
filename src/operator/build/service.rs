//! The ClusterIP Service in front of a workload's `/healthz`, `/readyz`, `/metrics` and
//! `/status` port, through which the operator reads `/status` and Prometheus scrapes, and of
//! the relay's transactional-message API port when it has one.

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{Workload, with_spec_hash};

pub fn build_service(workload: &Workload) -> Service {
    with_spec_hash(Service {
        metadata: workload.child_metadata(),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(workload.selector_labels()),
            ports: Some(
                workload
                    .named_ports()
                    .map(|(name, port)| ServicePort {
                        name: Some(name.to_owned()),
                        port: i32::from(port),
                        target_port: Some(IntOrString::String(name.to_owned())),
                        protocol: Some("TCP".to_owned()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}
