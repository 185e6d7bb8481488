//! One watch: newline-delimited JSON events read from the store's history, from the
//! version the client asked for. Guarantees, as kube-apiserver gives them: every change
//! after the start version is delivered once, in order, as ADDED/MODIFIED/DELETED (an
//! object entering or leaving the selector shows as ADDED or DELETED); BOOKMARKs carry
//! a version up to which everything was delivered; a start version older than the
//! history — or a client so slow that the history moved past it — gets one ERROR
//! event with a 410 `Expired` Status and the end of the stream. The stream also ends
//! at `timeoutSeconds` and when the server shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use futures::Stream;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::history::{Event, EventType};
use super::resource::Resource;
use super::selector::{FieldSelector, LabelSelector};
use super::server::Shared;
use super::status::ApiError;
use super::table;

/// Synthetic ADDED events sent per chunk when a watch starts with the current state.
const INITIAL_EVENTS_PER_CHUNK: usize = 200;

/// Which objects a list or watch selects.
#[derive(Clone, Debug)]
pub struct Selection {
    pub resource: &'static Resource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selection {
    pub fn selects(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// How `event` looks to this selection, if it sees it at all.
    fn view<'e>(&self, event: &'e Event) -> Option<(EventType, &'e Arc<Value>)> {
        if event.kind != self.resource.kind
            || self.namespace.as_ref().is_some_and(|ns| *ns != event.key.0)
        {
            return None;
        }
        let now = self.selects(&event.object);
        let event_type = match event.event_type {
            EventType::Added | EventType::Deleted => now.then_some(event.event_type)?,
            EventType::Modified => {
                let before = event.prev.as_deref().is_some_and(|p| self.selects(p));
                match (before, now) {
                    (true, true) => EventType::Modified,
                    (false, true) => EventType::Added,
                    (true, false) => EventType::Deleted,
                    (false, false) => return None,
                }
            }
        };
        Some((event_type, &event.object))
    }
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// ADDED for every selected object now, then changes from now on.
    /// `end_bookmark` is `sendInitialEvents=true`: a BOOKMARK marks the end of them.
    CurrentState { end_bookmark: bool },
    /// Changes after this version.
    After(u64),
}

#[derive(Clone, Debug)]
pub struct WatchRequest {
    pub selection: Selection,
    /// Send objects as one-row Tables of this apiVersion (`kubectl get -w`), with
    /// `includeObject`.
    pub table: Option<(&'static str, Option<String>)>,
    pub start: Start,
    pub bookmarks: bool,
    pub timeout: Duration,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    object: &'a Value,
}

fn push_line(out: &mut Vec<u8>, event_type: &str, object: &Value) {
    // Serializing a `Value` cannot fail.
    let _ = serde_json::to_writer(&mut *out, &Line { event_type, object });
    out.push(b'\n');
}

enum Wake {
    Changed,
    Bookmark,
    End,
}

struct Session {
    shared: Arc<Shared>,
    selection: Selection,
    table: Option<(&'static str, Option<String>)>,
    initial: VecDeque<Arc<Value>>,
    end_bookmark: bool,
    last_rv: u64,
    versions: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
    bookmarks: Option<Interval>,
    deadline: Instant,
    finished: bool,
}

/// The response body of a watch.
pub fn stream(
    shared: Arc<Shared>,
    request: WatchRequest,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    let versions = shared.versions.subscribe();
    let shutdown = shared.shutdown.subscribe();
    let (initial, last_rv, end_bookmark) = match request.start {
        Start::CurrentState { end_bookmark } => shared.read(|state| {
            let rv = state.resource_version();
            let objects = state
                .list_at(
                    request.selection.resource.kind,
                    request.selection.namespace.as_deref(),
                    None,
                    rv,
                )
                .unwrap_or_default();
            let initial = objects
                .into_iter()
                .map(|(_, object)| object)
                .filter(|object| request.selection.selects(object))
                .collect();
            (initial, rv, end_bookmark)
        }),
        Start::After(rv) => (VecDeque::new(), rv, false),
    };
    let bookmarks = request.bookmarks.then(|| {
        let period = shared.bookmark_interval.max(Duration::from_millis(10));
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        interval
    });
    let session = Session {
        shared,
        selection: request.selection,
        table: request.table,
        initial,
        end_bookmark,
        last_rv,
        versions,
        shutdown,
        bookmarks,
        deadline: Instant::now() + request.timeout,
        finished: false,
    };
    futures::stream::unfold(session, |mut session| async move {
        let chunk = session.next_chunk().await?;
        // A frozen server holds every chunk, bookmarks included.
        session.shared.thawed().await;
        Some((Ok(chunk), session))
    })
}

impl Session {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        if let Some(chunk) = self.initial_chunk() {
            return Some(chunk);
        }
        loop {
            // Frozen: read nothing from the history until the thaw, so changes made
            // meanwhile (and a compaction) are seen only then, as by a stalled server.
            self.shared.thawed().await;
            self.versions.borrow_and_update();
            match self.drain() {
                Ok(Some(chunk)) => return Some(chunk),
                Ok(None) => {}
                Err(error) => {
                    self.finished = true;
                    let mut out = Vec::new();
                    push_line(&mut out, "ERROR", &error.to_status());
                    return Some(out.into());
                }
            }
            let wake = {
                let bookmarks = &mut self.bookmarks;
                let bookmark_tick = async move {
                    match bookmarks {
                        Some(interval) => interval.tick().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = self.versions.changed() => {
                        if changed.is_err() { Wake::End } else { Wake::Changed }
                    }
                    _ = bookmark_tick => Wake::Bookmark,
                    _ = tokio::time::sleep_until(self.deadline) => Wake::End,
                    _ = self.shutdown.wait_for(|down| *down) => Wake::End,
                }
            };
            match wake {
                Wake::Changed => {}
                Wake::Bookmark => return Some(self.bookmark(false)),
                Wake::End => return None,
            }
        }
    }

    /// The next batch of synthetic ADDED events, then the end-of-initial-events
    /// bookmark if asked for.
    fn initial_chunk(&mut self) -> Option<Bytes> {
        if self.initial.is_empty() {
            if std::mem::take(&mut self.end_bookmark) {
                return Some(self.bookmark(true));
            }
            return None;
        }
        let mut out = Vec::new();
        let count = self.initial.len().min(INITIAL_EVENTS_PER_CHUNK);
        let objects: Vec<Arc<Value>> = self.initial.drain(..count).collect();
        for object in &objects {
            self.push_object(&mut out, EventType::Added, object);
        }
        Some(out.into())
    }

    /// Every visible change since the last one delivered, as one chunk.
    fn drain(&mut self) -> Result<Option<Bytes>, ApiError> {
        let events: Vec<Arc<Event>> = self.shared.read(|state| {
            if state.resource_version() <= self.last_rv {
                return Ok(Vec::new());
            }
            Ok(state.events_since(self.last_rv)?.cloned().collect())
        })?;
        let Some(last) = events.last() else {
            return Ok(None);
        };
        self.last_rv = last.rv;
        let mut out = Vec::new();
        for event in &events {
            if let Some((event_type, object)) = self.selection.view(event) {
                self.push_object(&mut out, event_type, object);
            }
        }
        Ok((!out.is_empty()).then(|| out.into()))
    }

    fn push_object(&self, out: &mut Vec<u8>, event_type: EventType, object: &Arc<Value>) {
        match &self.table {
            None => push_line(out, event_type.as_str(), object),
            Some((version, include_object)) => {
                let rv = object.pointer("/metadata/resourceVersion").cloned();
                let table = table::table(
                    version,
                    self.selection.resource.kind,
                    std::slice::from_ref(object),
                    json!({"resourceVersion": rv}),
                    include_object.as_deref(),
                );
                push_line(out, event_type.as_str(), &table);
            }
        }
    }

    fn bookmark(&self, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": self.last_rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.selection.resource.kind.as_str(),
            "apiVersion": self.selection.resource.api_version(),
            "metadata": metadata,
        });
        let mut out = Vec::new();
        push_line(&mut out, "BOOKMARK", &object);
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubewire::cache::Kind;

    fn event(event_type: EventType, prev: Option<Value>, object: Value) -> Event {
        Event {
            rv: 1,
            kind: Kind::Pod,
            key: ("a".into(), "p".into()),
            event_type,
            object: Arc::new(object),
            prev: prev.map(Arc::new),
        }
    }

    fn labelled(app: &str) -> Value {
        json!({"metadata": {"name": "p", "namespace": "a", "labels": {"app": app}}})
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let selection = Selection {
            resource: Resource::of(Kind::Pod),
            namespace: Some("a".into()),
            labels: LabelSelector::parse("app=web").unwrap(),
            fields: FieldSelector::default(),
        };
        let view = |e: &Event| selection.view(e).map(|(t, _)| t);
        let (web, db) = (labelled("web"), labelled("db"));
        let cases = [
            (EventType::Added, None, web.clone(), Some(EventType::Added)),
            (EventType::Added, None, db.clone(), None),
            (
                EventType::Modified,
                Some(web.clone()),
                web.clone(),
                Some(EventType::Modified),
            ),
            (
                EventType::Modified,
                Some(db.clone()),
                web.clone(),
                Some(EventType::Added),
            ),
            (
                EventType::Modified,
                Some(web.clone()),
                db.clone(),
                Some(EventType::Deleted),
            ),
            (EventType::Modified, Some(db.clone()), db.clone(), None),
            (
                EventType::Deleted,
                Some(web.clone()),
                web.clone(),
                Some(EventType::Deleted),
            ),
        ];
        for (event_type, prev, object, want) in cases {
            assert_eq!(
                view(&event(event_type, prev, object)),
                want,
                "{event_type:?}"
            );
        }
        let mut elsewhere = event(EventType::Added, None, web);
        elsewhere.key.0 = "b".into();
        assert_eq!(view(&elsewhere), None);
    }
}
