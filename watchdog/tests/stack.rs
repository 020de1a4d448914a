//! The warm stack in-process: the real server (`warm::serve` on port 0) and
//! the real pipeline around a fake runner, with a callback receiver on port 0.
//! The black-box suite (`tests/` at the repository root) drives the binary;
//! these tests reach the cases that need precise control over the runner.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::Request;
use runtime_sdk::{BoxFuture, ErrorCode, Handler, Invocation, InvokeError, InvokeResult, Json};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use watchdog::callback::CallbackClient;
use watchdog::config::{AllowedOrigins, CallbackConfig, WarmConfig};
use watchdog::metrics::Metrics;
use watchdog::shutdown::Shutdown;
use watchdog::validate::Validator;
use watchdog::warm::{self, State};

/// Does what its payload says: `{"sleep_ms": n}` sleeps then echoes,
/// `"panic"` panics, `{"huge": n}` returns a string of n bytes.
struct Fake;

impl Handler for Fake {
    fn mode(&self) -> &'static str {
        "FAKE"
    }

    fn invoke(&self, inv: Invocation) -> BoxFuture<'_, InvokeResult> {
        Box::pin(async move {
            let json = inv.payload.as_json().cloned().unwrap_or_else(Json::null);
            let v = json.to_value();
            if v == json!("panic") {
                panic!("the fake runner panics on purpose");
            }
            if let Some(ms) = v.get("sleep_ms").and_then(Value::as_u64) {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            if let Some(n) = v.get("huge").and_then(Value::as_u64) {
                if n > 1024 {
                    return Err(InvokeError::output_too_large("the fake output", 1024));
                }
            }
            Ok(json.into())
        })
    }
}

struct Stack {
    addr: SocketAddr,
    state: Arc<State>,
    callbacks: mpsc::UnboundedReceiver<(String, Value)>,
    _stop: tokio_util::sync::CancellationToken,
}

/// A callback receiver on port 0: every POST is sent down the channel.
async fn callback_server() -> (url::Url, mpsc::UnboundedReceiver<(String, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().fallback(move |req: Request| {
        let tx = tx.clone();
        async move {
            let path = req.uri().path().to_owned();
            let body: Bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
                .await
                .unwrap();
            let _ = tx.send((path, serde_json::from_slice(&body).unwrap_or(Value::Null)));
            "{}"
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/cb", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url::Url::parse(&url).unwrap(), rx)
}

async fn stack(max_concurrency: usize, timeout: Duration) -> Stack {
    let (cb_url, callbacks) = callback_server().await;
    let metrics = Metrics::new("fake", "FAKE");
    let warm_cfg = WarmConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_body_bytes: 1 << 20,
        max_concurrency,
        queue_depth: 4,
        invoke_token: None,
        invoke_methods: vec![watchdog::config::InvokeMethod::Post],
        execution_id: None,
        drain_timeout: Duration::from_millis(200),
        allowed_callback_origins: AllowedOrigins::Any,
        reload: false,
        conn: Default::default(),
    };
    let callback_cfg = CallbackConfig {
        url: Some(cb_url),
        token: None,
        token_origins: Vec::new(),
        attempts: 1,
        timeout: Duration::from_secs(2),
    };
    let state = Arc::new(State::new(
        warm_cfg,
        timeout,
        Arc::new(Fake),
        metrics.clone(),
        CallbackClient::new(callback_cfg, metrics),
        Validator::default(),
        Shutdown::new(),
    ));
    state
        .ready
        .store(true, std::sync::atomic::Ordering::Release);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    // What the binary serves: `/invoke` straight to its stack, the rest by the router.
    let app = warm::service(state.clone());
    let until = stop.clone();
    tokio::spawn(warm::serve(listener, app, Default::default(), async move {
        until.cancelled().await
    }));
    Stack {
        addr,
        state,
        callbacks,
        _stop: stop,
    }
}

async fn invoke(addr: SocketAddr, id: impl AsRef<str>, payload: Value) -> (u16, Value) {
    let id = id.as_ref();
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/invoke"))
        .header("x-execution-id", id)
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

async fn next_callback(s: &mut Stack) -> (String, Value) {
    tokio::time::timeout(Duration::from_secs(5), s.callbacks.recv())
        .await
        .expect("a callback within 5 s")
        .expect("the receiver is up")
}

#[tokio::test]
async fn the_router_still_answers_everything_but_invoke() {
    let s = stack(2, Duration::from_secs(5)).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{}{path}", s.addr);
    let resp = client.get(url("/invoke")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    let resp = client.get(url("/health")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let resp = client.post(url("/invoke/")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let (status, body) = invoke(s.addr, "routed", json!({"n": 1})).await;
    assert_eq!((status, body), (200, json!({"n": 1})));
}

#[tokio::test]
async fn queued_time_counts_against_the_deadline() {
    let s = stack(1, Duration::from_millis(300)).await;
    let first = tokio::spawn(invoke(s.addr, "first", json!({"sleep_ms": 250})));
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Waits ~220 ms for the slot, then would run 100 ms: past its 300 ms.
    let started = Instant::now();
    let (status, body) = invoke(s.addr, "second", json!({"sleep_ms": 100})).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["code"], "TIMEOUT");
    assert!(started.elapsed() < Duration::from_millis(450));
    assert_eq!(first.await.unwrap().0, 200);
}

#[tokio::test]
async fn a_disconnect_still_produces_the_callback() {
    let mut s = stack(2, Duration::from_secs(5)).await;
    let body = br#"{"sleep_ms": 200}"#;
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let head = format!(
        "POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: gone\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(conn);
    let (path, result) = next_callback(&mut s).await;
    assert_eq!(path, "/cb/gone:complete");
    assert_eq!(
        result,
        json!({"success": true, "output": {"sleep_ms": 200}, "error": null})
    );
    let metrics = s.state.metrics.render();
    assert!(
        metrics.contains("watchdog_client_disconnects_total{function=\"fake\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_panic_becomes_a_500_with_a_result() {
    let mut s = stack(2, Duration::from_secs(5)).await;
    let (status, body) = invoke(s.addr, "p1", json!("panic")).await;
    assert_eq!(status, 500);
    assert_eq!(body["code"], "FUNCTION_ERROR");
    assert!(body["error"].as_str().unwrap().contains("panic"), "{body}");
    let (_, result) = next_callback(&mut s).await;
    assert_eq!(result["error"]["code"], "FUNCTION_ERROR");
    // The server keeps serving.
    assert_eq!(invoke(s.addr, "p2", json!([1])).await, (200, json!([1])));
}

#[tokio::test]
async fn a_huge_output_is_output_too_large() {
    let s = stack(2, Duration::from_secs(5)).await;
    let (status, body) = invoke(s.addr, "h1", json!({"huge": 1 << 20})).await;
    assert_eq!(status, 500);
    assert_eq!(body["code"], ErrorCode::OutputTooLarge.as_str());
}

#[tokio::test]
async fn a_drain_past_its_deadline_answers_cancelled() {
    let mut s = stack(2, Duration::from_secs(30)).await;
    let running = tokio::spawn(invoke(s.addr, "long", json!({"sleep_ms": 10_000})));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    warm::drain(&s.state, Duration::from_millis(200)).await;
    let (status, body) = running.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "CANCELLED");
    assert!(started.elapsed() < Duration::from_secs(3));
    let (path, result) = next_callback(&mut s).await;
    assert_eq!(path, "/cb/long:complete");
    assert_eq!(result["error"]["code"], "CANCELLED");
    // Draining: new work is refused.
    let (status, body) = invoke(s.addr, "late", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "NOT_READY");
}

#[tokio::test]
async fn a_full_queue_refuses_before_the_body() {
    let s = stack(1, Duration::from_secs(5)).await;
    let mut busy = Vec::new();
    // One running and four queued fill every place.
    for i in 0..5 {
        busy.push(tokio::spawn(invoke(
            s.addr,
            format!("b{i}"),
            json!({"sleep_ms": 300}),
        )));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A request whose body never comes is refused at once.
    let mut conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(
        b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Execution-Id: late\r\nContent-Length: 100000\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 1024];
    let n = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut conn, &mut head),
    )
    .await
    .expect("an answer without the body")
    .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    for b in busy {
        assert_eq!(b.await.unwrap().0, 200);
    }
}
