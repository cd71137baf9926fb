//! `tracing` integration (feature `tracing`): each span opens a scope run,
//! so services already instrumented with spans get scopes without a wrapper.
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt;
//! let subscriber = tracing_subscriber::registry().with(leakscope::tracing::LeakScopeLayer::new());
//! tracing::subscriber::set_global_default(subscriber).unwrap();
//! ```
//!
//! A span's run opens when the span is made and closes when it is closed
//! (its last handle dropped); blocks allocated while the span is entered, on
//! whichever thread, belong to it. The scope is named by the span's name, or
//! by the value of a field ([`LeakScopeLayer::with_field`]). A span entered on
//! two threads at once counts on the first only.

use crate::alloc::runs::{self, RunRecord};
use crate::alloc::thread;
use crate::scope::guard::{close_run, open_run};
use std::cell::RefCell;
use tracing_core::span::{Attributes, Id};
use tracing_core::Subscriber;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// A `tracing_subscriber` layer that gives every span a scope run.
#[derive(Clone, Debug, Default)]
pub struct LeakScopeLayer {
    field: Option<&'static str>,
}

impl LeakScopeLayer {
    /// Scopes named by span names.
    pub fn new() -> LeakScopeLayer {
        LeakScopeLayer { field: None }
    }

    /// Scopes named by the value of `field` where a span records one at
    /// creation (`info_span!("request", route = "GET /users/{id}")`), by the
    /// span's name otherwise.
    pub fn with_field(field: &'static str) -> LeakScopeLayer {
        LeakScopeLayer { field: Some(field) }
    }
}

/// The run a span opened, in the span's extensions.
struct SpanRun(&'static RunRecord);

thread_local! {
    /// Spans whose runs this thread entered, innermost last.
    static ENTERED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// Finds the value of one field.
struct FieldValue<'a> {
    name: &'a str,
    value: Option<String>,
}

impl tracing_core::field::Visit for FieldValue<'_> {
    fn record_str(&mut self, field: &tracing_core::Field, value: &str) {
        if field.name() == self.name {
            self.value = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &tracing_core::Field, value: &dyn std::fmt::Debug) {
        if field.name() == self.name && self.value.is_none() {
            self.value = Some(format!("{value:?}"));
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for LeakScopeLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let rec = thread::untracked(|| {
            let mut name = None;
            if let Some(field) = self.field {
                let mut v = FieldValue {
                    name: field,
                    value: None,
                };
                attrs.record(&mut v);
                name = v.value;
            }
            let name = name.unwrap_or_else(|| attrs.metadata().name().to_owned());
            open_run(&name, false)
        });
        if let Some(rec) = rec {
            thread::untracked(|| span.extensions_mut().insert(SpanRun(rec)));
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(rec) = span.extensions().get::<SpanRun>().map(|r| r.0) else {
            return;
        };
        if runs::try_enter(rec) {
            thread::untracked(|| {
                let _ = ENTERED.try_with(|e| e.borrow_mut().push(id.into_u64()));
            });
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let mine = ENTERED
            .try_with(|e| {
                let mut e = e.borrow_mut();
                let at = e.iter().rposition(|&x| x == id.into_u64())?;
                e.remove(at);
                Some(())
            })
            .ok()
            .flatten()
            .is_some();
        if !mine {
            return;
        }
        if let Some(rec) = ctx
            .span(id)
            .and_then(|s| s.extensions().get::<SpanRun>().map(|r| r.0))
        {
            runs::leave(rec);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let run = span.extensions_mut().remove::<SpanRun>();
        if let Some(SpanRun(rec)) = run {
            close_run(rec, false);
        }
    }
}
