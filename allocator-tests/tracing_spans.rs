//! The tracing integration: spans open scopes, named by the span or by a
//! field, across threads and in instrumented futures.

#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();

mod common;

use std::hint::black_box;
use std::sync::Mutex;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

static KEPT: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

fn keep(size: usize) {
    KEPT.lock()
        .unwrap()
        .push(black_box(vec![3u8; size]).into_boxed_slice());
}

fn scope(name: &str) -> (u64, u64, u64) {
    let report = leakscope::snapshot();
    let s = report
        .scope(name)
        .unwrap_or_else(|| panic!("no scope {name}: {:?}", report.scopes));
    (s.runs, s.outstanding_blocks, s.outstanding_bytes)
}

fn spans_open_scopes() {
    KEPT.lock().unwrap().reserve(1024);
    let subscriber = tracing_subscriber::registry().with(leakscope::tracing::LeakScopeLayer::new());
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..10 {
            let span = tracing::info_span!("job");
            let _e = span.enter();
            keep(16);
            black_box(vec![0u8; 100]); // freed in the span: not outstanding
        }
        // Nested: the inner span takes its blocks.
        let outer = tracing::info_span!("outer");
        outer.in_scope(|| {
            keep(8);
            tracing::info_span!("inner").in_scope(|| keep(8));
        });
    });
    assert_eq!(scope("job"), (10, 10, 160));
    assert_eq!(scope("outer"), (1, 1, 8));
    assert_eq!(scope("inner"), (1, 1, 8));
}

fn a_span_entered_on_other_threads_and_in_futures() {
    let subscriber = tracing_subscriber::registry()
        .with(leakscope::tracing::LeakScopeLayer::with_field("route"));
    let dispatch = tracing::Dispatch::new(subscriber);
    tracing::dispatcher::with_default(&dispatch, || {
        // One span, entered on three threads in turn.
        let span = tracing::info_span!("request", route = "GET /moved");
        for _ in 0..3 {
            let span = span.clone();
            let dispatch = dispatch.clone();
            std::thread::spawn(move || {
                tracing::dispatcher::with_default(&dispatch, || span.in_scope(|| keep(24)))
            })
            .join()
            .unwrap();
        }
        drop(span);
        // Instrumented futures on a two-worker runtime.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        rt.block_on(async {
            let tasks: Vec<_> = (0..100)
                .map(|i| {
                    let span = tracing::info_span!("request", route = "GET /async");
                    tokio::spawn(
                        async move {
                            tokio::task::yield_now().await;
                            if i % 2 == 0 {
                                keep(32);
                            }
                            tokio::task::yield_now().await;
                        }
                        .instrument(span)
                        .with_subscriber_of(&dispatch),
                    )
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        });
    });
    assert_eq!(scope("GET /moved"), (1, 3, 72));
    assert_eq!(scope("GET /async"), (100, 50, 1600));
}

/// `tracing`'s `WithSubscriber` under a shorter name for the test.
trait WithDispatch: Sized {
    fn with_subscriber_of(self, d: &tracing::Dispatch) -> tracing::instrument::WithDispatch<Self>;
}

impl<F: std::future::Future> WithDispatch for F {
    fn with_subscriber_of(self, d: &tracing::Dispatch) -> tracing::instrument::WithDispatch<Self> {
        tracing::instrument::WithSubscriber::with_subscriber(self, d.clone())
    }
}

fn main() {
    common::run(&[
        ("spans_open_scopes", spans_open_scopes),
        (
            "a_span_entered_on_other_threads_and_in_futures",
            a_span_entered_on_other_threads_and_in_futures,
        ),
    ]);
}
