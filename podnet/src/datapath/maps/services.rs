//! `SERVICES`: NodePorts and their backends, and the slot protocol the programs rely on. Slot
//! 0 of a NodePort holds the number of backends; slots `1..=count` hold them. Backend slots are
//! written before the count that exposes them, and the count is lowered (or the head removed)
//! before the slots it no longer covers go, so a lookup never sees a slot that is not there.

use std::net::Ipv4Addr;

use podnet_ebpf::abi::{ServiceKey, ServiceValue, map_name};

use super::{PinnedMaps, is_not_found};
use crate::datapath::DatapathError;

fn key(port: u16, proto: u8, slot: u16) -> ServiceKey {
    ServiceKey {
        port,
        slot,
        proto,
        _pad: [0; 3],
    }
}

fn slot(index: usize) -> u16 {
    u16::try_from(index + 1).expect("backend counts are capped at MAX_BACKENDS")
}

impl PinnedMaps {
    fn service_set(&mut self, key: ServiceKey, value: ServiceValue) -> Result<(), DatapathError> {
        self.services
            .insert(key, value, 0)
            .map_err(Self::map_err(map_name::SERVICES))
    }

    fn service_remove(&mut self, key: &ServiceKey) -> Result<bool, DatapathError> {
        match self.services.remove(key) {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(Self::map_err(map_name::SERVICES)(source)),
        }
    }

    fn service(&self, key: &ServiceKey) -> Result<Option<ServiceValue>, DatapathError> {
        match self.services.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(Self::map_err(map_name::SERVICES)(source)),
        }
    }

    /// Writes `backends` for NodePort `port`/`proto` over `old_count` backends already in the
    /// map. An empty list keeps a head with count 0 if the NodePort existed (new connections are
    /// refused), and writes nothing if it did not.
    pub fn program_nodeport(
        &mut self,
        port: u16,
        proto: u8,
        backends: &[(Ipv4Addr, u16)],
        old_count: usize,
    ) -> Result<(), DatapathError> {
        for (i, (ip, backend_port)) in backends.iter().enumerate() {
            self.service_set(
                key(port, proto, slot(i)),
                ServiceValue {
                    addr: ip.octets(),
                    port: *backend_port,
                    count: 0,
                },
            )?;
        }
        if backends.is_empty() && old_count == 0 {
            self.service_remove(&key(port, proto, 0))?;
        } else {
            self.service_set(
                key(port, proto, 0),
                ServiceValue {
                    addr: [0; 4],
                    port: 0,
                    count: u16::try_from(backends.len()).expect("capped at MAX_BACKENDS"),
                },
            )?;
        }
        for i in backends.len()..old_count {
            self.service_remove(&key(port, proto, slot(i)))?;
        }
        Ok(())
    }

    /// Removes NodePort `port`/`proto` with its `count` backends: the head first, so the
    /// datapath never sees a count without its slots, then every backend slot.
    pub fn remove_nodeport(
        &mut self,
        port: u16,
        proto: u8,
        count: usize,
    ) -> Result<(), DatapathError> {
        self.service_remove(&key(port, proto, 0))?;
        for i in 0..count {
            self.service_remove(&key(port, proto, slot(i)))?;
        }
        Ok(())
    }

    /// The backends the map holds for NodePort `port`/`proto`, in slot order; `None` without
    /// a head (a slot that is missing reads as 0.0.0.0:0).
    pub fn nodeport_backends(
        &self,
        port: u16,
        proto: u8,
    ) -> Result<Option<Vec<(Ipv4Addr, u16)>>, DatapathError> {
        let Some(head) = self.service(&key(port, proto, 0))? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(usize::from(head.count));
        for i in 0..usize::from(head.count) {
            let backend = self.service(&key(port, proto, slot(i)))?;
            out.push(backend.map_or((Ipv4Addr::UNSPECIFIED, 0), |b| {
                (Ipv4Addr::from(b.addr), b.port)
            }));
        }
        Ok(Some(out))
    }
}
