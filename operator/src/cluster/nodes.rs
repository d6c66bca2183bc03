//! Node readiness from one watch of the nodes: a terminating worker's node is looked up here
//! instead of asking the API server once per pod per reconcile (thousands of GETs when a node
//! with many pods is lost). Only the name and the Ready condition are kept.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::Event;

/// Each node's Ready condition, from the node watch.
#[derive(Default)]
pub struct NodeReadiness {
    ready: RwLock<HashMap<String, bool>>,
    /// Pending (re)list: replaces `ready` once complete.
    relist: RwLock<Option<HashMap<String, bool>>>,
    listed: AtomicBool,
}

fn readiness(node: &Node) -> Option<(String, bool)> {
    let name = node.metadata.name.clone()?;
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    Some((name, ready))
}

impl NodeReadiness {
    /// Applies one watch event.
    pub fn apply(&self, event: &Event<Node>) {
        match event {
            Event::Apply(node) => {
                if let Some((name, ready)) = readiness(node) {
                    self.write().insert(name, ready);
                }
            }
            Event::Delete(node) => {
                if let Some(name) = node.metadata.name.as_ref() {
                    self.write().remove(name);
                }
            }
            Event::Init => {
                *self.relist.write().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
            }
            Event::InitApply(node) => {
                let mut relist = self.relist.write().unwrap_or_else(|e| e.into_inner());
                if let (Some(relist), Some((name, ready))) = (relist.as_mut(), readiness(node)) {
                    relist.insert(name, ready);
                }
            }
            Event::InitDone => {
                let complete = self
                    .relist
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if let Some(complete) = complete {
                    *self.write() = complete;
                }
                self.listed.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Whether `node` is Ready: `None` before the first complete list (or where nodes are not
    /// watched: a namespaced install may not read them), so a stuck pod is left to the cluster.
    /// A node that is not there at all (deleted) is not Ready.
    pub fn is_ready(&self, node: &str) -> Option<bool> {
        if !self.listed.load(Ordering::SeqCst) {
            return None;
        }
        Some(
            self.ready
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(node)
                .copied()
                .unwrap_or(false),
        )
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, bool>> {
        self.ready.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": ready}]},
        }))
        .expect("node")
    }

    #[test]
    fn readiness_follows_the_watch_and_is_unknown_before_the_first_list() {
        let nodes = NodeReadiness::default();
        nodes.apply(&Event::Apply(node("a", "True")));
        assert_eq!(nodes.is_ready("a"), None, "not listed yet");
        nodes.apply(&Event::Init);
        nodes.apply(&Event::InitApply(node("a", "True")));
        nodes.apply(&Event::InitApply(node("b", "Unknown")));
        nodes.apply(&Event::InitDone);
        assert_eq!(nodes.is_ready("a"), Some(true));
        assert_eq!(nodes.is_ready("b"), Some(false));
        nodes.apply(&Event::Apply(node("b", "True")));
        assert_eq!(nodes.is_ready("b"), Some(true));
        nodes.apply(&Event::Delete(node("a", "True")));
        assert_eq!(
            nodes.is_ready("a"),
            Some(false),
            "a deleted node is not Ready"
        );
    }
}
