//! The demo strategies `qmtl up` runs: two moving-average strategies that share their price
//! input, fed by synthetic bars with a backfilled history.

use sdk_runtime::{DefineError, NodeRef, Strategy, SyntheticBars, Value};
use serde_json::json;
use std::time::Duration;

/// One bar a minute of a synthetic BTC price.
const INTERVAL: i64 = 60;
const SEED: u64 = 7;

/// How fast and how long the demo's market runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub bars: u64,
    pub every: Duration,
}

/// The price stream both strategies define alike, so it is one node with one queue.
fn price(s: &mut Strategy, pace: Pace) -> Result<NodeRef, DefineError> {
    let bars = SyntheticBars::new(SEED);
    s.stream_input("btc-price")
        .tags(["btc", "price"])
        .interval(INTERVAL)
        .period(1)
        .history(bars)
        .live(bars.feed(INTERVAL).take(pace.bars).pace(pace.every))
        .build()
}

fn sma(s: &mut Strategy, input: NodeRef, window: usize) -> Result<NodeRef, DefineError> {
    s.node("SMA")
        .name(format!("sma{window}"))
        .input(input)
        .period(window)
        .params(json!({"window": window}))
        .code("sma", "1")
        .compute(move |v| v.window(input).mean())
}

/// +1 when `a` is above `b`, -1 below.
fn above(a: &Value, b: &Value) -> Option<f64> {
    let (a, b) = (a.as_f64()?, b.as_f64()?);
    Some(if a > b { 1.0 } else { -1.0 })
}

/// Long while the 10-bar average is above the 30-bar one.
pub(crate) fn ma_crossover(pace: Pace) -> Result<(Strategy, NodeRef), DefineError> {
    let mut s = Strategy::new("ma-crossover");
    let price = price(&mut s, pace)?;
    let fast = sma(&mut s, price, 10)?;
    let slow = sma(&mut s, price, 30)?;
    let signal = s
        .node("Crossover")
        .input(fast)
        .input(slow)
        .code("crossover", "1")
        .compute(move |v| above(v.window(fast).last()?, v.window(slow).last()?))?;
    Ok((s, signal))
}

/// Long while the price is above its 50-bar average.
pub(crate) fn ma_trend(pace: Pace) -> Result<(Strategy, NodeRef), DefineError> {
    let mut s = Strategy::new("ma-trend");
    let price = price(&mut s, pace)?;
    let trend = sma(&mut s, price, 50)?;
    let signal = s
        .node("Trend")
        .input(price)
        .input(trend)
        .code("trend", "1")
        .compute(move |v| above(v.window(price).last()?, v.window(trend).last()?))?;
    Ok((s, signal))
}
