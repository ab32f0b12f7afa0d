//! The ClusterIP Service in front of a workload's `/healthz`, `/readyz`, `/metrics` and
//! `/status` port, through which the operator reads `/status` and Prometheus scrapes.

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{HTTP_PORT_NAME, Workload, with_spec_hash};

pub fn build_service(workload: &Workload) -> Service {
    with_spec_hash(Service {
        metadata: workload.child_metadata(),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(workload.selector_labels()),
            ports: Some(vec![ServicePort {
                name: Some(HTTP_PORT_NAME.to_owned()),
                port: i32::from(workload.http_port),
                target_port: Some(IntOrString::String(HTTP_PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    })
}
