//! One command's context: the node's settings, its maps (opened once, on first use) and one
//! netlink connection with the runtime it runs on (made once, on first use), passed down to
//! every operation the command runs. Built after the process entered the node's namespace, so
//! the netlink socket is the node's.

use std::cell::{OnceCell, RefCell, RefMut};

use super::error::Result;
use crate::{
    config::NodeSettings,
    datapath::{maps::PinnedMaps, services_map::ServicesMap},
    sys::link::Netlink,
};

pub struct Ctx {
    pub settings: NodeSettings,
    maps: OnceCell<RefCell<PinnedMaps>>,
    services: OnceCell<RefCell<ServicesMap>>,
    netlink: OnceCell<(tokio::runtime::Runtime, Netlink)>,
}

impl Ctx {
    pub fn new(settings: NodeSettings) -> Self {
        Self {
            settings,
            maps: OnceCell::new(),
            services: OnceCell::new(),
            netlink: OnceCell::new(),
        }
    }

    /// The node's pinned maps, opened on first use. Hold the borrow only for the map work at
    /// hand: operations this one calls borrow them too.
    pub fn maps(&self) -> Result<RefMut<'_, PinnedMaps>> {
        if let Some(maps) = self.maps.get() {
            return Ok(maps.borrow_mut());
        }
        let maps = PinnedMaps::open(&self.settings.pin_dir)?;
        Ok(self.maps.get_or_init(|| RefCell::new(maps)).borrow_mut())
    }

    /// The service maps (frontends, backends, reverse translations), opened on first use: their
    /// frontends are read once then, so writes need no scan.
    pub fn services(&self) -> Result<RefMut<'_, ServicesMap>> {
        if let Some(services) = self.services.get() {
            return Ok(services.borrow_mut());
        }
        let services = ServicesMap::open(&self.settings.pin_dir)?;
        Ok(self
            .services
            .get_or_init(|| RefCell::new(services))
            .borrow_mut())
    }

    /// The maps if they are pinned (teardown works on a node whose maps are gone).
    pub fn maps_if_pinned(&self) -> Option<RefMut<'_, PinnedMaps>> {
        self.maps().ok()
    }

    /// Runs `f` with the command's netlink connection, made on first use in the calling
    /// thread's namespace (the node's).
    pub fn netlink<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce(Netlink) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let (runtime, netlink) = match self.netlink.get() {
            Some(made) => made,
            None => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(crate::sys::link::LinkError::Runtime)?;
                let netlink = {
                    let _entered = runtime.enter();
                    Netlink::new()?
                };
                self.netlink.get_or_init(|| (runtime, netlink))
            }
        };
        runtime.block_on(f(netlink.clone()))
    }
}
