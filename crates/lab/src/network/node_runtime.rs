//! A tokio runtime on a thread inside a node's network namespace. Sockets belong to the namespace
//! of the thread that makes them, so whatever must connect from the node (the kubelet's probes)
//! or listen on its addresses (the cluster DNS) runs as tasks here, while the rest of the
//! process stays in the host's namespace.

use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::netns::{Netns, NetnsError};

pub struct NodeRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), NetnsError>>>,
}

impl NodeRuntime {
    /// Starts the runtime's thread inside `node`.
    pub fn start(node: &Netns) -> Result<NodeRuntime, NetnsError> {
        let (handles, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = node.spawn_inside(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("node")
                .build()
                .expect("a current-thread runtime builds");
            let _ = handles.send(runtime.handle().clone());
            runtime.block_on(async {
                let _ = stopped.await;
            });
        });
        match handle.recv() {
            Ok(handle) => Ok(NodeRuntime {
                handle,
                stop: Some(stop),
                thread: Some(thread),
            }),
            // The thread ended before it had a runtime: it could not enter the namespace.
            Err(_) => match thread.join() {
                Ok(Err(error)) => Err(error),
                _ => Err(NetnsError::Enter {
                    namespace: node.name().to_owned(),
                    source: std::io::Error::other("the node's runtime thread ended at once"),
                }),
            },
        }
    }

    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
