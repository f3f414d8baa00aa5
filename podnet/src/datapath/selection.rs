//! The maps behind a frontend's backend choice beyond a random slot: the Maglev tables
//! (`MAGLEV`, a hash of maps: service id -> an inner array of backend ids; one for both
//! families, since service ids are one space) and the session affinity entries (`AFFINITY`,
//! and `AFFINITY6` for IPv6 frontends: service id and client -> backend). The service maps' writer
//! ([`super::services_map`]) keeps both in step with the frontends: a Maglev frontend's table is
//! rebuilt with each change of its backends, and an affinity entry goes when its backend leaves
//! the frontend, the frontend goes, or its affinity changes.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd as _, OwnedFd},
};

use aya::maps::Map;
use podnet_ebpf::abi::{
    AffinityKey, AffinityKey6, AffinityValue, AffinityValue6, MAGLEV_TABLE_SIZE, map_name,
};

use super::{
    DatapathError,
    batch::{
        create_u32_array, delete_batch, delete_elem, fd_u32, lookup_all, own_fd, update_batch,
        update_elem,
    },
};

/// The Maglev tables and affinity entries of a node.
pub struct Selection {
    maglev: OwnedFd,
    affinity: OwnedFd,
    affinity6: OwnedFd,
}

impl Selection {
    pub fn from_maps(affinity: &Map, affinity6: &Map, maglev: &Map) -> Result<Self, DatapathError> {
        Ok(Self {
            maglev: own_fd(maglev, map_name::MAGLEV)?,
            affinity: own_fd(affinity, map_name::AFFINITY)?,
            affinity6: own_fd(affinity6, map_name::AFFINITY6)?,
        })
    }

    /// Installs `table` (backend ids, [`MAGLEV_TABLE_SIZE`] of them) as service `id`'s Maglev
    /// table: a new inner array, filled, then swapped in with one update, so a packet reads the
    /// old table or the new one, whole.
    pub fn install_maglev(&self, id: u32, table: &[u32]) -> Result<(), DatapathError> {
        assert_eq!(table.len(), MAGLEV_TABLE_SIZE as usize, "a full table");
        let inner = create_u32_array("podnet_maglev", MAGLEV_TABLE_SIZE)?;
        let keys: Vec<u32> = (0..MAGLEV_TABLE_SIZE).collect();
        update_batch(inner.as_fd(), map_name::MAGLEV, &keys, table)?;
        update_elem(
            self.maglev.as_fd(),
            map_name::MAGLEV,
            &id,
            &fd_u32(inner.as_fd()),
        )
        // The outer map holds its own reference to the inner one; ours closes here.
    }

    /// Removes service `id`'s Maglev table; `Ok(false)` if it had none.
    pub fn remove_maglev(&self, id: u32) -> Result<bool, DatapathError> {
        delete_elem(self.maglev.as_fd(), map_name::MAGLEV, &id)
    }

    /// Every service id with a Maglev table.
    pub fn maglev_ids(&self) -> Result<Vec<u32>, DatapathError> {
        // A hash of maps reads back inner map ids, which are 4 bytes like the descriptors.
        Ok(
            lookup_all::<u32, u32>(self.maglev.as_fd(), map_name::MAGLEV)?
                .into_iter()
                .map(|(k, _)| k)
                .collect(),
        )
    }

    /// Every affinity entry of IPv4 frontends.
    pub fn affinities(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, DatapathError> {
        lookup_all(self.affinity.as_fd(), map_name::AFFINITY)
    }

    /// Every affinity entry of IPv6 frontends.
    pub fn affinities6(&self) -> Result<Vec<(AffinityKey6, AffinityValue6)>, DatapathError> {
        lookup_all(self.affinity6.as_fd(), map_name::AFFINITY6)
    }

    /// Deletes the affinity entries of the services in `whole` (gone, or their affinity
    /// changed) and those whose `(service id, backend address, port)` is in `departed` (the
    /// backend left that frontend), in both families. One read of each map, only when there
    /// is anything to do. Returns how many went.
    pub fn forget_affinities(
        &self,
        whole: &HashSet<u32>,
        departed: &HashSet<(u32, IpAddr, u16)>,
    ) -> Result<usize, DatapathError> {
        if whole.is_empty() && departed.is_empty() {
            return Ok(0);
        }
        let gone: Vec<AffinityKey> = self
            .affinities()?
            .into_iter()
            .filter(|(k, v)| {
                let backend = IpAddr::V4(Ipv4Addr::from(v.backend.addr));
                whole.contains(&k.id) || departed.contains(&(k.id, backend, v.backend.port))
            })
            .map(|(k, _)| k)
            .collect();
        delete_batch(self.affinity.as_fd(), map_name::AFFINITY, &gone)?;
        let gone6: Vec<AffinityKey6> = self
            .affinities6()?
            .into_iter()
            .filter(|(k, v)| {
                let backend = IpAddr::V6(Ipv6Addr::from(v.backend.addr));
                whole.contains(&k.id) || departed.contains(&(k.id, backend, v.backend.port))
            })
            .map(|(k, _)| k)
            .collect();
        delete_batch(self.affinity6.as_fd(), map_name::AFFINITY6, &gone6)?;
        Ok(gone.len() + gone6.len())
    }

    /// Deletes every Maglev table and affinity entry.
    pub fn clear(&self) -> Result<(), DatapathError> {
        for id in self.maglev_ids()? {
            self.remove_maglev(id)?;
        }
        let keys: Vec<AffinityKey> = self.affinities()?.into_iter().map(|(k, _)| k).collect();
        delete_batch(self.affinity.as_fd(), map_name::AFFINITY, &keys)?;
        let keys: Vec<AffinityKey6> = self.affinities6()?.into_iter().map(|(k, _)| k).collect();
        delete_batch(self.affinity6.as_fd(), map_name::AFFINITY6, &keys)
    }
}
