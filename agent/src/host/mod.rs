//! What the agent learns of the host's processes outside the probes:
//! `/proc` ([`procfs`]), containers and pods from cgroups ([`container`]),
//! Kubernetes's view of this node's pods ([`k8s`]), which processes to
//! trace ([`discovery`]), and the registry of traced processes with their
//! OpenTelemetry resources ([`process`]).

pub mod container;
pub mod discovery;
pub mod glob;
pub mod k8s;
pub mod process;
pub mod procfs;
