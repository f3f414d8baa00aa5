//! The maps behind a frontend's backend choice beyond a random slot: the Maglev tables
//! (`MAGLEV`, a hash of maps: service id -> an inner array of backend ids) and the session
//! affinity entries (`AFFINITY`: service id and client -> backend). The service maps' writer
//! ([`super::services_map`]) keeps both in step with the frontends: a Maglev frontend's table is
//! rebuilt with each change of its backends, and an affinity entry goes when its backend leaves
//! the frontend, the frontend goes, or its affinity changes.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::maps::Map;
use podnet_ebpf::abi::{AffinityKey, AffinityValue, MAGLEV_TABLE_SIZE, map_name};

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
}

impl Selection {
    pub fn from_maps(affinity: &Map, maglev: &Map) -> Result<Self, DatapathError> {
        Ok(Self {
            maglev: own_fd(maglev, map_name::MAGLEV)?,
            affinity: own_fd(affinity, map_name::AFFINITY)?,
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

    /// Every affinity entry.
    pub fn affinities(&self) -> Result<Vec<(AffinityKey, AffinityValue)>, DatapathError> {
        lookup_all(self.affinity.as_fd(), map_name::AFFINITY)
    }

    /// Deletes the affinity entries of the services in `whole` (gone, or their affinity
    /// changed) and those whose `(service id, backend address, port)` is in `departed` (the
    /// backend left that frontend). One read of the map, only when there is anything to do.
    /// Returns how many went.
    pub fn forget_affinities(
        &self,
        whole: &HashSet<u32>,
        departed: &HashSet<(u32, Ipv4Addr, u16)>,
    ) -> Result<usize, DatapathError> {
        if whole.is_empty() && departed.is_empty() {
            return Ok(0);
        }
        let gone: Vec<AffinityKey> = self
            .affinities()?
            .into_iter()
            .filter(|(k, v)| {
                whole.contains(&k.id)
                    || departed.contains(&(k.id, Ipv4Addr::from(v.backend.addr), v.backend.port))
            })
            .map(|(k, _)| k)
            .collect();
        delete_batch(self.affinity.as_fd(), map_name::AFFINITY, &gone)?;
        Ok(gone.len())
    }

    /// Deletes every Maglev table and affinity entry.
    pub fn clear(&self) -> Result<(), DatapathError> {
        for id in self.maglev_ids()? {
            self.remove_maglev(id)?;
        }
        let keys: Vec<AffinityKey> = self.affinities()?.into_iter().map(|(k, _)| k).collect();
        delete_batch(self.affinity.as_fd(), map_name::AFFINITY, &keys)
    }
}
