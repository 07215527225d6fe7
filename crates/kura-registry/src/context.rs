//! Who is asking: the request context that travels with a request's task, so that events
//! emitted deep in the service carry the actor, source address and request id without every
//! service method taking them as parameters.
//!
//! The HTTP layer opens a scope per request ([`scope`]) with the request id and peer address,
//! and fills in the actor once authentication has decided it ([`set_actor`]). Work outside a
//! request (scheduler, background GC) has no context; its events are attributed to the system.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// What kind of principal acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    User,
    Robot,
    Anonymous,
    /// Kura itself (scheduled jobs, background GC).
    System,
}

impl ActorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::User => "user",
            ActorKind::Robot => "robot",
            ActorKind::Anonymous => "anonymous",
            ActorKind::System => "system",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub kind: ActorKind,
}

impl Actor {
    pub fn system() -> Actor {
        Actor {
            name: "system".into(),
            kind: ActorKind::System,
        }
    }

    pub fn anonymous() -> Actor {
        Actor {
            name: "anonymous".into(),
            kind: ActorKind::Anonymous,
        }
    }
}

/// The context of one request. Interior mutability because authentication happens inside
/// the scope the HTTP layer opened before it.
#[derive(Debug, Default)]
pub struct RequestContext {
    pub request_id: String,
    pub source_ip: Option<IpAddr>,
    actor: Mutex<Option<Actor>>,
    resource: Mutex<Option<(String, Option<String>)>>,
}

impl RequestContext {
    pub fn new(request_id: String, source_ip: Option<IpAddr>) -> RequestContext {
        RequestContext {
            request_id,
            source_ip,
            ..RequestContext::default()
        }
    }

    /// The authenticated actor, if authentication ran.
    pub fn actor(&self) -> Option<Actor> {
        self.actor.lock().expect("request context").clone()
    }

    /// A resource name (and its project) a handler learnt while serving, e.g. the name of a
    /// project it created; the audit record of a management call uses it.
    pub fn noted_resource(&self) -> Option<(String, Option<String>)> {
        self.resource.lock().expect("request context").clone()
    }
}

tokio::task_local! {
    static CURRENT: Arc<RequestContext>;
}

/// Runs `fut` with `ctx` as the current request context.
pub async fn scope<F: Future>(ctx: Arc<RequestContext>, fut: F) -> F::Output {
    CURRENT.scope(ctx, fut).await
}

/// The current request's context, if running inside one.
pub fn current() -> Option<Arc<RequestContext>> {
    CURRENT.try_with(|c| c.clone()).ok()
}

/// Records who the current request acts as (no-op outside a request).
pub fn set_actor(actor: Actor) {
    let _ = CURRENT.try_with(|c| *c.actor.lock().expect("request context") = Some(actor));
}

/// Notes the resource the current request acted on (see [`RequestContext::noted_resource`]).
pub fn note_resource(resource: impl Into<String>, project: Option<&str>) {
    let _ = CURRENT.try_with(|c| {
        *c.resource.lock().expect("request context") =
            Some((resource.into(), project.map(str::to_string)))
    });
}

/// Where an event came from: the actor and request it happened in, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventContext {
    pub actor: Actor,
    pub source_ip: Option<IpAddr>,
    pub request_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

impl EventContext {
    /// The context of the calling task: the current request's, or the system's.
    pub fn capture() -> EventContext {
        let at_ms = kura_metadata::now_ms();
        match current() {
            Some(c) => EventContext {
                actor: c.actor().unwrap_or_else(Actor::anonymous),
                source_ip: c.source_ip,
                request_id: Some(c.request_id.clone()),
                at_ms,
            },
            None => EventContext {
                actor: Actor::system(),
                source_ip: None,
                request_id: None,
                at_ms,
            },
        }
    }
}
