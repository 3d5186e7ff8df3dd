//! Notifications (issue #16): per-session queues in the replicated store, fed by upstreams (the publish
//! listener and subscribed SSE feeds), delivered on the session's responses, by poll (long poll) and by
//! an SSE stream, and deleted on acknowledgement — docs/NOTIFICATIONS.md is the backend author's side.
//!
//! - [`queue`]: the records (kinds 9 and 10) and the writes (publish, ack, delete).
//! - [`ids`]: notification ids, and the promise that lets a node deliver only what nothing smaller can
//!   still precede.
//! - [`hub`]: what every thread shares: the indexes of queues and of users' sessions, fed by the store's
//!   watcher, the waiting requests to wake, the id clock and the counters.
//! - [`parse`]: publish bodies, ack bodies, query parameters (untrusted input: never panics).
//! - [`sse`]: writing Server-Sent Events, and the parser the feed client reads them with.
//! - [`endpoints`]: the request stage (publish listener, poll, ack, stream start) and the piggyback hook.
//! - [`stream`]: a live SSE stream's state, driven by the session's `Stream` phase.
//! - [`feed`]: the subscriber thread, one persistent connection per configured upstream feed.
//! - [`settings`]: `[notifications]` compiled for the config snapshot.

pub(crate) mod endpoints;
pub mod feed;
pub mod hub;
pub mod ids;
pub mod parse;
pub mod queue;
pub mod settings;
pub mod sse;
pub(crate) mod stream;

pub use hub::{Hub, Stats};
pub use settings::Settings;
