//! Feature `metrics`: the gauges of `/metrics` published through the
//! [`metrics`](https://docs.rs/metrics) facade, so that the exporter a
//! service already runs (metrics-exporter-prometheus, or any recorder)
//! shows them on its own endpoint.
//!
//! A thread of leakscope's own reads the counters ([`Readings`], the same
//! values as [`metrics_text`](crate::serve::live::metrics_text)) every interval and sets
//! them: process gauges and counters, then per scope (label `scope`) and per
//! function holding the most live bytes (label `function`). A function that
//! leaves the top is set to 0 (the facade cannot remove a
//! series). The recorder's own allocations on that thread are leakscope's,
//! untracked.

use crate::alloc::thread;
use crate::report::metrics::{self as m, Readings};
use crate::serve::{env, spawn_own, OwnThread};
use std::collections::HashSet;
use std::sync::mpsc;
use std::time::Duration;

/// The thread [`publish_metrics`] started; dropping it stops it.
#[derive(Debug)]
pub struct MetricsPublisher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<OwnThread>,
}

impl Drop for MetricsPublisher {
    fn drop(&mut self) {
        // Closing the channel wakes the thread at once.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            t.join();
        }
    }
}

/// Publishes leakscope's metrics through the `metrics` facade's recorder
/// (install it first) now and then every `every`, until the returned value
/// is dropped (or, [`std::mem::forget`] it, for the life of the process).
/// The names, labels and help are those of `/metrics`; the functions shown
/// are `LEAKSCOPE_METRICS_SITES` (10 unless set). Reading costs counters
/// only: no leak check, no stack walk.
pub fn publish_metrics(every: Duration) -> std::io::Result<MetricsPublisher> {
    // The thread sleeps on the channel between readings: woken by the
    // interval or by the drop, never polling (a wake-up every few
    // milliseconds shows in a busy service on few cores).
    let (stop, stopped) = thread::untracked(mpsc::channel::<()>);
    let thread = spawn_own(c"leakscope-metric", move || {
        for (name, counter, help) in m::families() {
            if counter {
                metrics::describe_counter!(name, help);
            } else {
                metrics::describe_gauge!(name, help);
            }
        }
        let mut shown: HashSet<String> = HashSet::new();
        loop {
            publish(&Readings::now(env::metrics_sites()), &mut shown);
            if stopped.recv_timeout(every) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
        }
    })?;
    Ok(MetricsPublisher {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Sets every metric to `r`; `shown` holds the functions published last
/// time, and those no longer among the top go to 0.
fn publish(r: &Readings, shown: &mut HashSet<String>) {
    let t = &r.totals;
    metrics::gauge!(m::LIVE_BYTES).set(t.live_bytes as f64);
    metrics::gauge!(m::LIVE_BLOCKS).set(t.live_blocks as f64);
    metrics::counter!(m::ALLOCATED_BYTES).absolute(t.total_bytes);
    metrics::counter!(m::ALLOCATED_BLOCKS).absolute(t.total_blocks);
    metrics::gauge!(m::PEAK_LIVE_BYTES).set(t.peak_live_bytes as f64);
    metrics::gauge!(m::SAMPLE_BYTES).set(r.sample_bytes as f64);
    for s in &r.scopes {
        let scope = || [("scope", s.scope.clone())];
        metrics::gauge!(m::SCOPE_BYTES, &scope()).set(s.outstanding_bytes as f64);
        metrics::gauge!(m::SCOPE_BLOCKS, &scope()).set(s.outstanding_blocks as f64);
        metrics::counter!(m::SCOPE_RUNS, &scope()).absolute(s.runs);
        metrics::gauge!(m::SCOPE_GROWING, &scope()).set(f64::from(u8::from(s.growing)));
    }
    let mut now = HashSet::with_capacity(r.sites.len());
    for s in &r.sites {
        let function = [("function", s.function.clone())];
        metrics::gauge!(m::SITE_BYTES, &function).set(s.live_bytes as f64);
        metrics::gauge!(m::SITE_BLOCKS, &function).set(s.live_blocks as f64);
        now.insert(s.function.clone());
    }
    for gone in shown.difference(&now) {
        let function = [("function", gone.clone())];
        metrics::gauge!(m::SITE_BYTES, &function).set(0.0);
        metrics::gauge!(m::SITE_BLOCKS, &function).set(0.0);
    }
    *shown = now;
}
