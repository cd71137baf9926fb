#[global_allocator]
static GLOBAL: leakscope::LeakTracker = leakscope::LeakTracker::system();
#[inline(never)]
fn work(n: usize) -> usize {
    let mut s = 0;
    for i in 0..n {
        let v = std::hint::black_box(vec![0u8; 64 + (i & 7)]);
        s += v.len();
    }
    s
}
fn main() {
    let scoped = std::env::var("SCOPED").is_ok();
    let t = std::time::Instant::now();
    let n = 10_000_000;
    let s = if scoped {
        leakscope::track_scope("x", || work(n))
    } else {
        work(n)
    };
    println!("{s} {:.1} ns/op", t.elapsed().as_nanos() as f64 / n as f64);
}
