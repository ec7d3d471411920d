//! Never adopt: which of a plan's creates already exist under their names.
//!
//! `plan` lists only the objects labelled for the environment, so an object
//! someone else made (or another environment owns) looks new. Before a plan
//! is shown or synced, each create is looked up by name (a LIST with a field
//! selector, so the `list` verb suffices): the objects found go to
//! [`crate::sync::tenancy::settle_ownership`], which keeps them out of the sync.
//! A steady-state plan has no creates and makes no request here; a first
//! sync looks up its namespaces with one LIST and skips the children of
//! namespaces that do not exist yet.

use std::collections::HashSet;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use super::execute::APPLY_CONCURRENCY;
use super::{Cluster, ClusterError};
use crate::plan::{Action, Change, Plan};

impl Cluster {
    /// The live objects that already exist under the names of `plan`'s
    /// creates (with `apiVersion` and `kind` set).
    pub async fn find_existing(&self, plan: &Plan) -> Result<Vec<Value>, ClusterError> {
        let creates: Vec<&Change> = plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Create)
            .collect();
        if creates.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        // Namespaces: one LIST of them all (their names only matter).
        let new_namespaces: HashSet<&str> = creates
            .iter()
            .filter(|c| &*c.kind == "Namespace")
            .map(|c| &*c.name)
            .collect();
        let mut existing_namespaces: HashSet<String> = HashSet::new();
        if !new_namespaces.is_empty() {
            let api: Api<DynamicObject> = Api::all_with(
                self.client.clone(),
                &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Namespace>(&()),
            );
            let mut params = ListParams::default().limit(3000);
            loop {
                self.count(false);
                let page = api
                    .list(&params)
                    .await
                    .map_err(|e| self.classify(e, "list", "namespaces"))?;
                for ns in page.items {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    if new_namespaces.contains(name.as_str()) {
                        found.push(live_value("v1", "Namespace", ns));
                    }
                    existing_namespaces.insert(name);
                }
                match page.metadata.continue_ {
                    Some(token) if !token.is_empty() => params = params.continue_token(&token),
                    _ => break,
                }
            }
        }
        // Other creates, except in namespaces this sync creates and that do
        // not exist: nothing can be in them yet.
        let lookups: Vec<&Change> = creates
            .into_iter()
            .filter(|c| &*c.kind != "Namespace")
            .filter(|c| {
                c.namespace.as_deref().is_none_or(|ns| {
                    !new_namespaces.contains(ns) || existing_namespaces.contains(ns)
                })
            })
            .collect();
        // A window of requests in flight, as wide as the connection's for
        // writes up to APPLY_CONCURRENCY (reads: an operator's larger
        // --max-writes-in-flight is for writes) (FuturesUnordered rather than `buffer_unordered`: a stream
        // holding a closure that returns borrowing futures is not Send for
        // the daemon's spawn).
        let mut queue = lookups.into_iter();
        let mut in_flight = FuturesUnordered::new();
        let window = || self.throttle().limit().min(APPLY_CONCURRENCY);
        while in_flight.len() < window() {
            let Some(c) = queue.next() else { break };
            in_flight.push(self.lookup(c));
        }
        while let Some(result) = in_flight.next().await {
            while in_flight.len() < window() {
                let Some(c) = queue.next() else { break };
                in_flight.push(self.lookup(c));
            }
            if let Some(live) = result? {
                found.push(live);
            }
        }
        Ok(found)
    }

    /// The live object named as `change`'s, if there is one.
    async fn lookup(&self, change: &Change) -> Result<Option<Value>, ClusterError> {
        // A kind the server does not serve yet (its CRD comes with this
        // sync) has no objects.
        let Some((resource, namespaced)) =
            self.resolve_kind(&change.api_version, &change.kind).await?
        else {
            return Ok(None);
        };
        // A cluster-scoped kind looked up with a namespace would find the
        // cluster-wide object under a key that is not the change's: it
        // would look like nobody's and be taken over.
        super::scope_check(
            &change.id(),
            &change.api_version,
            &change.kind,
            namespaced,
            change.namespace.as_deref(),
        )?;
        let api: Api<DynamicObject> = match change.namespace.as_deref() {
            Some(ns) if namespaced => Api::namespaced_with(self.client.clone(), ns, &resource),
            _ => Api::all_with(self.client.clone(), &resource),
        };
        let params = ListParams::default().fields(&format!("metadata.name={}", change.name));
        self.count(false);
        let list = api
            .list(&params)
            .await
            .map_err(|e| self.classify(e, "list", &resource.plural))?;
        Ok(list
            .items
            .into_iter()
            .next()
            .map(|o| live_value(&change.api_version, &change.kind, o)))
    }
}

fn live_value(api_version: &str, kind: &str, object: DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    value["apiVersion"] = api_version.into();
    value["kind"] = kind.into();
    value
}
