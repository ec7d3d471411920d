//! Reading a LIST response item by item.
//!
//! A page of a LIST is read straight from the response text into one
//! `serde_json::Value` per item, each handed on before the next is read: no
//! typed list, no copy of the page. So a page can be large (few requests)
//! and still cost little more memory than its text.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use futures::{AsyncBufRead, AsyncBufReadExt};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};

use super::{Cluster, ClusterError, PAGE_SIZE, api_resource, api_version_of};
use crate::object;

/// A response body, read whole into one buffer as its chunks arrive (not
/// the client's buffer, then a copy). Not `read_to_end`: futures' zeroes
/// the buffer's spare room again at every chunk that has not arrived yet,
/// which took a third of a no-op plan's CPU at 20,000 workspaces (pages of
/// about 10 MB).
async fn read_all(body: impl AsyncBufRead) -> std::io::Result<Vec<u8>> {
    let mut body = std::pin::pin!(body);
    let mut text = Vec::new();
    loop {
        let chunk = body.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(text);
        }
        let n = chunk.len();
        text.extend_from_slice(chunk);
        body.as_mut().consume(n);
    }
}

/// Reads one LIST response, giving each item to `sink` with the
/// `apiVersion` and `kind` that LIST responses leave out of their items.
/// Returns the continue token of a next page, if there is one.
pub(crate) fn read_page(
    text: &[u8],
    api_version: &str,
    kind: &str,
    sink: &mut dyn FnMut(Value),
) -> Result<Option<String>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let token = Page {
        api_version,
        kind,
        sink,
    }
    .deserialize(&mut de)?;
    de.end()?;
    Ok(token.filter(|t| !t.is_empty()))
}

struct Page<'a> {
    api_version: &'a str,
    kind: &'a str,
    sink: &'a mut dyn FnMut(Value),
}

#[derive(serde::Deserialize)]
struct ListMeta {
    #[serde(rename = "continue", default)]
    continue_: Option<String>,
}

impl<'de> DeserializeSeed<'de> for Page<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Page<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes list")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut token = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'_, str>>()? {
            match &*key {
                "metadata" => token = map.next_value::<ListMeta>()?.continue_,
                "items" => map.next_value_seed(Items {
                    api_version: self.api_version,
                    kind: self.kind,
                    sink: &mut *self.sink,
                })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(token)
    }
}

struct Items<'a> {
    api_version: &'a str,
    kind: &'a str,
    sink: &'a mut dyn FnMut(Value),
}

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of objects")
    }

    /// `"items": null`: an empty list.
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(mut item) = seq.next_element::<Value>()? {
            if let Some(map) = item.as_object_mut() {
                map.insert("apiVersion".into(), self.api_version.into());
                map.insert("kind".into(), self.kind.into());
            }
            (self.sink)(item);
        }
        Ok(())
    }
}

/// A selection of at most this many namespaces (`--workspace`,
/// `plan --changed-since`) is listed namespace by namespace; a larger one
/// across all namespaces, as the whole environment is.
pub const MAX_NAMESPACES_LISTED_APART: usize = 10;

/// Where one LIST looks: every namespace, or one, or one object by name.
#[derive(Clone, Copy)]
enum Within<'a> {
    All,
    Namespace(&'a str),
    /// A cluster-scoped object of this name (`metadata.name=`).
    Named(&'a str),
}

impl Cluster {
    /// Lists the objects tenantsync manages in `environment`: one LIST per
    /// kind (per page of [`PAGE_SIZE`]), across all namespaces, by label. `extra`
    /// names further kinds (`apiVersion`, `kind`) to list: plain manifests'
    /// kinds and the inventory's. Each object goes to `sink` as its page
    /// arrives, so a caller that keeps only what it needs holds one page at
    /// a time, not every object of the environment.
    pub async fn for_each_managed(
        &self,
        environment: &str,
        extra: &[(String, String)],
        sink: impl FnMut(Value),
    ) -> Result<(), ClusterError> {
        self.for_each_managed_in(environment, None, extra, sink)
            .await
    }

    /// [`Cluster::for_each_managed`], or, for a selection of `namespaces`
    /// (at most [`MAX_NAMESPACES_LISTED_APART`]), only what is in them: each
    /// namespaced kind listed in each of those namespaces, the Namespaces
    /// themselves by name, and no other cluster-scoped kind (nothing a
    /// selection holds). A one-workspace plan of a large environment then
    /// reads that workspace's objects, not the environment's.
    pub async fn for_each_managed_in(
        &self,
        environment: &str,
        namespaces: Option<&std::collections::BTreeSet<String>>,
        extra: &[(String, String)],
        mut sink: impl FnMut(Value),
    ) -> Result<(), ClusterError> {
        let selector = object::selector(environment);
        let apart = namespaces.filter(|n| n.len() <= MAX_NAMESPACES_LISTED_APART);
        let mut kinds: Vec<(ApiResource, String, bool)> = object::MANAGED_KINDS
            .iter()
            .map(|k| (api_resource(k), k.kind.to_string(), k.namespaced))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for (api_version, kind) in extra {
            let fixed = object::MANAGED_KINDS
                .iter()
                .any(|k| k.kind == kind && api_version_of(k) == *api_version);
            if fixed || !seen.insert((api_version, kind)) {
                continue;
            }
            if let Some((resource, namespaced)) = self.resolve_kind(api_version, kind).await? {
                kinds.push((resource, kind.clone(), namespaced));
            }
        }
        for (resource, kind, namespaced) in kinds {
            match apart {
                None => {
                    self.list_kind(resource, &kind, &selector, Within::All, &mut sink)
                        .await?
                }
                Some(namespaces) => {
                    for ns in namespaces {
                        let within = match (namespaced, kind.as_str()) {
                            (true, _) => Within::Namespace(ns),
                            (false, "Namespace") => Within::Named(ns),
                            (false, _) => continue,
                        };
                        self.list_kind(resource.clone(), &kind, &selector, within, &mut sink)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Every object of one kind labelled as `environment`'s, across all
    /// namespaces (a page at a time), each given to `sink` with its
    /// `apiVersion` and `kind`.
    pub(crate) async fn for_each_labelled(
        &self,
        environment: &str,
        resource: ApiResource,
        kind: &str,
        mut sink: impl FnMut(Value),
    ) -> Result<(), ClusterError> {
        let selector = object::selector(environment);
        self.list_kind(resource, kind, &selector, Within::All, &mut sink)
            .await
    }

    async fn list_kind(
        &self,
        resource: ApiResource,
        kind_name: &str,
        selector: &str,
        within: Within<'_>,
        sink: &mut impl FnMut(Value),
    ) -> Result<(), ClusterError> {
        let api: Api<DynamicObject> = match within {
            Within::Namespace(ns) => Api::namespaced_with(self.client.clone(), ns, &resource),
            Within::All | Within::Named(_) => Api::all_with(self.client.clone(), &resource),
        };
        let resource_name = if resource.group.is_empty() {
            resource.plural.clone()
        } else {
            format!("{}.{}", resource.plural, resource.group)
        };
        let mut params = ListParams::default().labels(selector).limit(PAGE_SIZE);
        if let Within::Named(name) = within {
            params = params.fields(&format!("metadata.name={name}"));
        }
        let request = kube::core::Request::new(api.resource_url());
        loop {
            let http = request
                .list(&params)
                .map_err(|e| ClusterError::Unreadable {
                    server: self.server.clone(),
                    verb: "list".into(),
                    resource: resource_name.clone(),
                    reason: format!("cannot build the request: {e}"),
                })?;
            self.count(false);
            let body = self
                .client
                .request_stream(http)
                .await
                .map_err(|e| self.classify(e, "list", &resource_name))?;
            let text = read_all(body)
                .await
                .map_err(|e| ClusterError::Unreachable {
                    server: self.server.clone(),
                    reason: format!("reading a list of {resource_name}: {e}"),
                })?;
            let token = read_page(&text, &resource.api_version, kind_name, sink).map_err(|e| {
                ClusterError::Unreadable {
                    server: self.server.clone(),
                    verb: "list".into(),
                    resource: resource_name.clone(),
                    reason: format!("unreadable response: {e}"),
                }
            })?;
            match token {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_arriving_in_chunks_with_pauses_is_read_whole() {
        use futures::{StreamExt, TryStreamExt};
        let chunks: Vec<Vec<u8>> = (0..200u32)
            .map(|i| format!("{i:05}").repeat(1 + i as usize % 7).into_bytes())
            .collect();
        let whole: Vec<u8> = chunks.concat();
        // Each chunk is first not there yet (a poll answered Pending), as
        // a body arriving over the network is.
        let stream = futures::stream::iter(chunks)
            .then(|c| async move {
                tokio::task::yield_now().await;
                c
            })
            .map(Ok::<_, std::io::Error>)
            .into_async_read();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(runtime.block_on(read_all(stream)).unwrap(), whole);
        let empty = futures::stream::empty::<std::io::Result<Vec<u8>>>().into_async_read();
        assert!(runtime.block_on(read_all(empty)).unwrap().is_empty());
    }

    #[test]
    fn items_arrive_one_by_one_with_their_kind_and_the_token() {
        let page = json!({
            "kind": "DeploymentList",
            "apiVersion": "apps/v1",
            "metadata": {"resourceVersion": "7", "continue": "abc"},
            "items": [
                {"metadata": {"name": "a", "namespace": "n"}, "spec": {"replicas": 1}},
                {"metadata": {"name": "b", "namespace": "n"}}
            ]
        })
        .to_string();
        let mut seen = Vec::new();
        let token = read_page(page.as_bytes(), "apps/v1", "Deployment", &mut |v| {
            seen.push(v)
        })
        .unwrap();
        assert_eq!(token.as_deref(), Some("abc"));
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0]["kind"], "Deployment");
        assert_eq!(seen[0]["apiVersion"], "apps/v1");
        assert_eq!(seen[0]["spec"]["replicas"], 1);
        assert_eq!(seen[1]["metadata"]["name"], "b");
    }

    #[test]
    fn the_last_page_has_no_token_and_empty_lists_are_fine() {
        let mut seen = 0;
        for page in [
            r#"{"metadata":{"resourceVersion":"9"},"items":[]}"#,
            r#"{"metadata":{"continue":""},"items":null}"#,
        ] {
            let token = read_page(page.as_bytes(), "v1", "ConfigMap", &mut |_| seen += 1).unwrap();
            assert_eq!(token, None);
        }
        assert_eq!(seen, 0);
    }

    #[test]
    fn a_malformed_response_is_an_error() {
        assert!(read_page(br#"{"items": [1, "#, "v1", "ConfigMap", &mut |_| {}).is_err());
        assert!(read_page(br#"{"items": 3}"#, "v1", "ConfigMap", &mut |_| {}).is_err());
    }
}
