//! podnet's records and naming rules: pure types, shared by every layer above. Nothing here
//! touches the system.
//!
//! - [`names`]: the names podnet derives and checks (interfaces, pods, namespaces, owners);
//! - [`pod`], [`attachment`], [`peer`], [`nodeport`]: the records the store keeps and the
//!   operations work on.

pub mod attachment;
pub mod maglev;
pub mod names;
pub mod nodeport;
pub mod peer;
pub mod pod;
pub mod port_range;
pub mod service;
