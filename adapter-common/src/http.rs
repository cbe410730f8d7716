//! The operations listener (`kind = "http"` / `"https"`): HTTP/1.1 and HTTP/2
//! served by hyper on the broker's own thread, whatever the runtime: the
//! connection's [`Transport`] is adapted to hyper's IO traits, and HTTP/2 streams
//! are spawned on the runtime's local executor.
//!
//! - `GET /metrics`: Prometheus text ([`crate::metrics`]), a snapshot taken on the
//!   broker's thread when the scrape comes.
//! - `GET /healthz`: 200 while the server runs. `GET /readyz`: 200 once the store
//!   is loaded and every listener accepts (503 before, and while shutting down).
//! - `POST /mqtt/messages?topic=T`: publish over HTTP with Event Grid's mapping
//!   ([`request_to_publish`]). The request becomes an MQTT 5.0 client of the
//!   broker for its duration, over an in-memory connection served by the same
//!   connection loop as a socket: it is authenticated as MQTT clients are (HTTP
//!   Basic as User Name and Password, `Bearer` as a `CUSTOM-JWT` token, the TLS
//!   client certificate, anonymous where allowed) and authorized by the same
//!   bindings, and the MQTT outcome becomes the HTTP status ([`connack_status`],
//!   [`puback_status`]).
//!
//! HTTP/2 is chosen by its connection preface: a client that negotiated `h2` by
//! ALPN (the https listener offers it), or one speaking it with prior knowledge.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use base64::Engine;
use broker_state::{Now, PeerInfo};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use mqtt_proto::{
    Connect, ConnectProperties, Decoder, Disconnect, MqttString, Packet, PacketId, PayloadFormat,
    ProtocolVersion, PubAck, Publish, PublishProperties, QoS, ReasonCode, TopicName,
};

use crate::connection::{timeout, SharedHub, Transport};

/// The HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long one HTTP connection may stay open at most (a scraper reconnects).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// How long an MQTT step of an HTTP publish may take (the CONNECT's
/// authentication included).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// A spawner of local futures (the runtime's).
pub type Spawn = Rc<dyn Fn(Pin<Box<dyn Future<Output = ()>>>)>;
/// The runtime's timer.
pub type Sleep = Rc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()>>>>;

/// What the HTTP connections of a server thread share.
pub struct HttpContext {
    /// The broker and its connections.
    pub hub: SharedHub,
    /// Spawns HTTP/2 streams and the in-memory MQTT connections of publishes.
    pub spawn: Spawn,
    /// The runtime's timer.
    pub sleep: Sleep,
    /// Both clocks.
    pub clock: fn() -> Now,
    /// Every listener accepts and the store is loaded.
    pub ready: Cell<bool>,
    /// Parked connections, for the metrics.
    pub parked: crate::park::ParkedGauge,
    /// Time for TLS handshakes (and the in-memory connections' own).
    pub handshake_timeout: Duration,
    /// Requests served, by endpoint and status.
    pub requests: RefCell<BTreeMap<(String, u16), u64>>,
}

impl HttpContext {
    /// A context for the server thread of `hub`.
    pub fn new(
        hub: SharedHub,
        spawn: Spawn,
        sleep: Sleep,
        clock: fn() -> Now,
        parked: crate::park::ParkedGauge,
        handshake_timeout: Duration,
    ) -> Rc<Self> {
        Rc::new(HttpContext {
            hub,
            spawn,
            sleep,
            clock,
            ready: Cell::new(false),
            parked,
            handshake_timeout,
            requests: RefCell::new(BTreeMap::new()),
        })
    }

    /// The metrics as a scrape reports them.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        let hub = self.hub.borrow();
        crate::metrics::Snapshot {
            stats: hub.broker().stats(),
            gauges: hub.broker().gauges(),
            parked: self.parked.get(),
            hub: hub.counters().clone(),
            store: hub.store().map(|s| s.stats()),
            cluster: hub.cluster().map(|c| c.counters().outcomes()),
            lifecycle: hub.lifecycle_counters(),
            http: self.requests.borrow().clone(),
        }
    }
}

/// A [`Transport`] as hyper's IO, with bytes read ahead (the preface check) kept
/// for hyper.
struct HttpIo<T> {
    t: T,
    pending: BytesMut,
}

impl<T: Transport> HttpIo<T> {
    /// Reads until `n` bytes are in, the bytes in cannot be the HTTP/2 preface,
    /// or the stream ends.
    async fn fill_for_preface(&mut self) -> io::Result<()> {
        while self.pending.len() < PREFACE.len() && PREFACE.starts_with(&self.pending[..]) {
            self.pending.reserve(4096);
            let n = poll_fn(|cx| self.t.poll_read_buf(cx, &mut self.pending)).await?;
            if n == 0 {
                break;
            }
        }
        Ok(())
    }
}

impl<T: Transport> hyper::rt::Read for HttpIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending.is_empty() {
            this.pending.reserve(16 * 1024);
            match this.t.poll_read_buf(cx, &mut this.pending) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: Transport> hyper::rt::Write for HttpIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().t.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Transports write through.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().t.poll_close(cx)
    }
}

/// hyper's executor for HTTP/2 streams: the runtime's local spawner.
#[derive(Clone)]
struct LocalExec(Spawn);

impl<F: Future<Output = ()> + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, fut: F) {
        (self.0)(Box::pin(fut))
    }
}

/// One HTTP connection (its TLS handshake done) until it ends or
/// [`CONNECTION_LIFETIME`] runs out.
pub async fn serve_http<T: Transport + 'static>(
    ctx: Rc<HttpContext>,
    t: T,
    peer: PeerInfo,
    read: BytesMut,
) {
    let mut io = HttpIo { t, pending: read };
    match timeout((ctx.sleep)(ctx.handshake_timeout), io.fill_for_preface()).await {
        Some(Ok(())) => {}
        _ => return,
    }
    let h2 = io.pending.starts_with(PREFACE);
    let service_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let (ctx, peer) = (service_ctx.clone(), peer.clone());
        async move { Ok::<_, Infallible>(handle(&ctx, &peer, req).await) }
    });
    let lifetime = (ctx.sleep)(CONNECTION_LIFETIME);
    if h2 {
        let conn = hyper::server::conn::http2::Builder::new(LocalExec(ctx.spawn.clone()))
            .serve_connection(io, service);
        let _ = timeout(lifetime, conn).await;
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(io, service);
        let _ = timeout(lifetime, conn).await;
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn handle(ctx: &HttpContext, peer: &PeerInfo, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let endpoint = match path.as_str() {
        "/metrics" | "/healthz" | "/readyz" | "/mqtt/messages" => path.clone(),
        _ => "other".to_owned(),
    };
    let response = match (req.method(), path.as_str()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut r = text(StatusCode::OK, crate::metrics::render(&ctx.snapshot()));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") if ctx.ready.get() => {
            text(StatusCode::OK, "ready\n")
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }
        (&Method::POST, "/mqtt/messages") => publish(ctx, peer, req).await,
        (_, "/metrics" | "/healthz" | "/readyz" | "/mqtt/messages") => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            let allow = if path == "/mqtt/messages" {
                "POST"
            } else {
                "GET, HEAD"
            };
            r.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static(allow),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    *ctx.requests
        .borrow_mut()
        .entry((endpoint, response.status().as_u16()))
        .or_insert(0) += 1;
    response
}

/// An HTTP publish request as MQTT: the PUBLISH and the CONNECT's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPublish {
    /// The PUBLISH (packet id set later).
    pub publish: Publish,
    /// User Name and Password (HTTP Basic).
    pub basic: Option<(String, Bytes)>,
    /// A bearer token (MQTT 5.0 `CUSTOM-JWT`).
    pub bearer: Option<Bytes>,
}

/// Why a request is not an MQTT publish: the status and the reason.
pub type Refusal = (StatusCode, String);

fn bad(msg: impl Into<String>) -> Refusal {
    (StatusCode::BAD_REQUEST, msg.into())
}

/// Event Grid's mapping of an HTTP publish to MQTT: `topic` (query, required),
/// `qos` / `mqtt-qos` (0, 1 or 2; default 1), `retain` / `mqtt-retain`,
/// `mqtt-response-topic` (percent-encoded in a header), `mqtt-correlation-data`
/// (base64), `mqtt-user-properties` (base64 of a JSON array of one-key objects, in
/// order), `Content-Type`, `mqtt-message-expiry` (seconds),
/// `mqtt-payload-format-indicator` (0 or 1); a query value overrides a header.
/// The body is the payload.
pub fn request_to_publish(
    query: Option<&str>,
    headers: &hyper::HeaderMap,
    body: Bytes,
) -> Result<HttpPublish, Refusal> {
    let query: Vec<(String, String)> = query
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    let from_query = |names: &[&str]| {
        query
            .iter()
            .rev()
            .find(|(k, _)| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
            .map(|(_, v)| v.clone())
    };
    let from_header = |names: &[&str]| -> Result<Option<String>, Refusal> {
        for n in names {
            if let Some(v) = headers.get(*n) {
                let v = v
                    .to_str()
                    .map_err(|_| bad(format!("header {n}: expected visible ASCII")))?;
                return Ok(Some(v.to_owned()));
            }
        }
        Ok(None)
    };
    // A query value overrides a header; header values that may hold any text are
    // percent-encoded.
    let get = |names: &[&str], encoded_header: bool| -> Result<Option<String>, Refusal> {
        if let Some(v) = from_query(names) {
            return Ok(Some(v));
        }
        Ok(from_header(names)?.map(|v| {
            if encoded_header {
                decode_percent(&v, false)
            } else {
                v
            }
        }))
    };
    let topic =
        from_query(&["topic"]).ok_or_else(|| bad("the query must name a topic: ?topic=..."))?;
    let topic = TopicName::new(Bytes::from(topic.clone())).map_err(|_| {
        bad(format!(
            "topic {topic:?} is not a valid MQTT topic name (no wildcards, not empty)"
        ))
    })?;
    let qos = match get(&["qos", "mqtt-qos"], false)?.as_deref() {
        None => QoS::AtLeastOnce,
        Some("0") => QoS::AtMostOnce,
        Some("1") => QoS::AtLeastOnce,
        Some("2") => QoS::ExactlyOnce,
        Some(other) => return Err(bad(format!("qos: expected 0, 1 or 2, found {other:?}"))),
    };
    let retain = match get(&["retain", "mqtt-retain"], false)?.as_deref() {
        None => false,
        Some("true" | "1") => true,
        Some("false" | "0") => false,
        Some(other) => {
            return Err(bad(format!(
                "retain: expected true or false, found {other:?}"
            )))
        }
    };
    let mut properties = PublishProperties::default();
    if let Some(t) = get(&["mqtt-response-topic"], true)? {
        properties.response_topic = Some(TopicName::new(Bytes::from(t.clone())).map_err(|_| {
            bad(format!(
                "mqtt-response-topic: {t:?} is not a valid topic name"
            ))
        })?);
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(c) = get(&["mqtt-correlation-data"], false)? {
        properties.correlation_data =
            Some(Bytes::from(b64.decode(c.as_bytes()).map_err(|_| {
                bad("mqtt-correlation-data: expected base64")
            })?));
    }
    if let Some(u) = get(&["mqtt-user-properties"], false)? {
        let json = b64
            .decode(u.as_bytes())
            .map_err(|_| bad("mqtt-user-properties: expected base64 of a JSON array"))?;
        let list: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(&json)
            .map_err(|_| {
                bad("mqtt-user-properties: expected a JSON array of one-key objects, e.g. [{\"Urgency\":\"alert\"}]")
            })?;
        let mut pairs = Vec::with_capacity(list.len());
        for object in list {
            let mut it = object.into_iter();
            let (Some((k, serde_json::Value::String(v))), None) = (it.next(), it.next()) else {
                return Err(bad(
                    "mqtt-user-properties: each element must be an object with one string value",
                ));
            };
            pairs.push((k, v));
        }
        properties.user_properties = mqtt_proto::UserProperties::from_pairs(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(|_| bad("mqtt-user-properties: a name or value is not a valid MQTT string"))?;
    }
    if let Some(ct) = get(&["content-type"], false)? {
        properties.content_type = Some(
            MqttString::copy_from_str(&ct)
                .map_err(|_| bad("content-type: not a valid MQTT string"))?,
        );
    }
    if let Some(e) = get(&["mqtt-message-expiry"], false)? {
        properties.message_expiry_interval = Some(e.parse().map_err(|_| {
            bad(format!(
                "mqtt-message-expiry: expected seconds, found {e:?}"
            ))
        })?);
    }
    if let Some(p) = get(&["mqtt-payload-format-indicator"], false)? {
        properties.payload_format_indicator = Some(match p.as_str() {
            "0" => PayloadFormat::Unspecified,
            "1" => PayloadFormat::Utf8,
            other => {
                return Err(bad(format!(
                    "mqtt-payload-format-indicator: expected 0 or 1, found {other:?}"
                )))
            }
        });
    }
    let (basic, bearer) = match headers.get(hyper::header::AUTHORIZATION) {
        None => (None, None),
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                (
                    StatusCode::UNAUTHORIZED,
                    "authorization: expected ASCII".into(),
                )
            })?;
            let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = b64.decode(rest.trim().as_bytes()).map_err(|_| {
                    (
                        StatusCode::UNAUTHORIZED,
                        "authorization: Basic expects base64 of user:password".into(),
                    )
                })?;
                let text = String::from_utf8(decoded).map_err(|_| {
                    (
                        StatusCode::UNAUTHORIZED,
                        "authorization: the user name must be UTF-8".into(),
                    )
                })?;
                let (user, password) = text.split_once(':').unwrap_or((&text, ""));
                (
                    Some((user.to_owned(), Bytes::from(password.to_owned()))),
                    None,
                )
            } else if scheme.eq_ignore_ascii_case("bearer") {
                (None, Some(Bytes::from(rest.trim().to_owned())))
            } else {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    format!("authorization: expected Basic or Bearer, found {scheme:?}"),
                ));
            }
        }
    };
    Ok(HttpPublish {
        publish: Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id: None,
            properties,
            payload: body,
        },
        basic,
        bearer,
    })
}

fn percent_decode(s: &str) -> String {
    // `+` stays `+` (RFC 3986): read as a space (HTML form encoding), `?topic=a/+`
    // would publish to "a/ " instead of being refused as a wildcard.
    decode_percent(s, false)
}

/// `%XX` escapes decoded; `+` is a space in a query (form encoding), itself in a
/// header.
fn decode_percent(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The HTTP status for a refused CONNECT.
pub fn connack_status(code: ReasonCode) -> StatusCode {
    match code {
        ReasonCode::Success => StatusCode::NO_CONTENT,
        ReasonCode::BadUserNameOrPassword
        | ReasonCode::NotAuthorized
        | ReasonCode::BadAuthenticationMethod
        | ReasonCode::Banned => StatusCode::UNAUTHORIZED,
        ReasonCode::ServerUnavailable | ReasonCode::ServerBusy | ReasonCode::QuotaExceeded => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ReasonCode::PacketTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// The HTTP status for a PUBLISH's outcome (its PUBACK or PUBREC).
pub fn puback_status(code: ReasonCode) -> StatusCode {
    match code {
        ReasonCode::Success | ReasonCode::NoMatchingSubscribers => StatusCode::NO_CONTENT,
        ReasonCode::NotAuthorized => StatusCode::FORBIDDEN,
        ReasonCode::PacketTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ReasonCode::QuotaExceeded
        | ReasonCode::ServerBusy
        | ReasonCode::ServerUnavailable
        | ReasonCode::UnspecifiedError => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    }
}

async fn publish(ctx: &HttpContext, peer: &PeerInfo, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let max = ctx.hub.borrow().broker().max_packet_size() as usize;
    let body = match Limited::new(body, max).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than the broker's maximum packet size ({max} bytes)\n"),
            )
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "the body could not be read\n"),
    };
    let outcome = match request_to_publish(parts.uri.query(), &parts.headers, body) {
        Ok(request) if request.publish.encoded_len(ProtocolVersion::V5) > max => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the PUBLISH would be larger than the broker's maximum packet size ({max} bytes)"
            ),
        )),
        Ok(request) => run_publish(ctx, peer, request).await,
        Err(refusal) => Err(refusal),
    };
    match outcome {
        Ok(()) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err((status, reason)) => {
            let mut r = text(status, format!("{reason}\n"));
            // Every 401 says how to authenticate (RFC 9110 15.5.2).
            if status == StatusCode::UNAUTHORIZED {
                r.headers_mut().insert(
                    hyper::header::WWW_AUTHENTICATE,
                    hyper::header::HeaderValue::from_static("Basic realm=\"brokk\", Bearer"),
                );
            }
            r
        }
    }
}

/// Publishes as an MQTT 5.0 client over an in-memory connection: CONNECT (its
/// credentials), PUBLISH (and its acknowledgements), DISCONNECT.
async fn run_publish(
    ctx: &HttpContext,
    peer: &PeerInfo,
    request: HttpPublish,
) -> Result<(), Refusal> {
    let (broker_end, client) = pipe();
    let (hub, clock, sleep) = (ctx.hub.clone(), ctx.clock, ctx.sleep.clone());
    (ctx.spawn)(Box::pin(crate::connection::serve(
        hub,
        broker_end,
        peer.clone(),
        false,
        None,
        ctx.handshake_timeout,
        clock,
        move |d| sleep(d),
        BytesMut::new(),
    )));
    let mut properties = ConnectProperties::default();
    if let Some(token) = &request.bearer {
        properties.authentication_method = MqttString::copy_from_str(crate::jwt::METHOD).ok();
        properties.authentication_data = Some(token.clone());
    }
    let (username, password) = match request.basic {
        Some((u, p)) => (
            Some(MqttString::copy_from_str(&u).map_err(|_| {
                (
                    StatusCode::UNAUTHORIZED,
                    "the user name is not a valid MQTT string".to_owned(),
                )
            })?),
            Some(p),
        ),
        None => (None, None),
    };
    // An empty client id: the broker assigns one that no session has, so an HTTP
    // publish never takes an MQTT client's session over (nor the reverse).
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: MqttString::default(),
        will: None,
        username,
        password,
        properties,
    };
    let mut session = MemoryClient::new(client);
    let step = |sleep: &Sleep| sleep(PUBLISH_TIMEOUT);
    session.send(Packet::Connect(Box::new(connect)))?;
    let unavailable = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker did not answer in time".to_owned(),
        )
    };
    let client_id = match timeout(step(&ctx.sleep), session.recv())
        .await
        .ok_or_else(unavailable)?
    {
        Some(Packet::ConnAck(a)) if a.reason_code == ReasonCode::Success => {
            a.properties.assigned_client_identifier.unwrap_or_default()
        }
        Some(Packet::ConnAck(a)) => {
            return Err((
                connack_status(a.reason_code),
                format!("CONNECT refused: {}", a.reason_code),
            ))
        }
        _ => return Err(unavailable()),
    };
    let mut publish = request.publish;
    let qos = publish.qos;
    // MQTT does not acknowledge QoS 0: ask the broker first whether it would take
    // it, so a refusal is still a 403.
    if qos == QoS::AtMostOnce
        && !ctx
            .hub
            .borrow_mut()
            .may_publish(client_id.as_bytes(), &publish.topic, publish.retain)
    {
        let _ = session.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
        return Err((
            StatusCode::FORBIDDEN,
            "PUBLISH refused: Not authorized (0x87)".into(),
        ));
    }
    if qos != QoS::AtMostOnce {
        publish.packet_id = PacketId::new(1);
    }
    session.send(Packet::Publish(publish))?;
    let outcome = match qos {
        QoS::AtMostOnce => Ok(()),
        QoS::AtLeastOnce | QoS::ExactlyOnce => {
            match timeout(step(&ctx.sleep), session.recv())
                .await
                .ok_or_else(unavailable)?
            {
                Some(Packet::PubAck(a)) => status_of(a.reason_code),
                Some(Packet::PubRec(a)) if !a.reason_code.is_success() => status_of(a.reason_code),
                Some(Packet::PubRec(a)) => {
                    session.send(Packet::PubRel(PubAck::new(a.packet_id)))?;
                    match timeout(step(&ctx.sleep), session.recv())
                        .await
                        .ok_or_else(unavailable)?
                    {
                        Some(Packet::PubComp(c)) => status_of(c.reason_code),
                        _ => Err(unavailable()),
                    }
                }
                Some(Packet::Disconnect(d)) => Err((
                    puback_status(d.reason_code),
                    format!("the broker disconnected: {}", d.reason_code),
                )),
                _ => Err(unavailable()),
            }
        }
    };
    let _ = session.send(Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
    session.close();
    outcome
}

fn status_of(code: ReasonCode) -> Result<(), Refusal> {
    match puback_status(code) {
        StatusCode::NO_CONTENT => Ok(()),
        status => Err((status, format!("PUBLISH refused: {code}"))),
    }
}

// ------------------------------------------------------------------ in-memory pipe

#[derive(Default)]
struct Pipe {
    to_broker: BytesMut,
    from_broker: BytesMut,
    client_closed: bool,
    broker_closed: bool,
    broker_waker: Option<Waker>,
    client_waker: Option<Waker>,
}

/// The broker's end of an in-memory connection.
struct BrokerEnd(Rc<RefCell<Pipe>>);

fn pipe() -> (BrokerEnd, Rc<RefCell<Pipe>>) {
    let p = Rc::new(RefCell::new(Pipe::default()));
    (BrokerEnd(p.clone()), p)
}

impl Transport for BrokerEnd {
    fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        let mut p = self.0.borrow_mut();
        if !p.to_broker.is_empty() {
            let n = p.to_broker.len();
            buf.extend_from_slice(&p.to_broker);
            p.to_broker.clear();
            return Poll::Ready(Ok(n));
        }
        if p.client_closed {
            return Poll::Ready(Ok(0));
        }
        p.broker_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_write(&mut self, _cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let mut p = self.0.borrow_mut();
        if p.client_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        p.from_broker.extend_from_slice(data);
        if let Some(w) = p.client_waker.take() {
            w.wake();
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_close(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut p = self.0.borrow_mut();
        p.broker_closed = true;
        if let Some(w) = p.client_waker.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

/// The HTTP publish's MQTT client over the pipe.
struct MemoryClient {
    pipe: Rc<RefCell<Pipe>>,
    decoder: Decoder,
}

impl MemoryClient {
    fn new(pipe: Rc<RefCell<Pipe>>) -> Self {
        MemoryClient {
            pipe,
            decoder: Decoder::with_version(ProtocolVersion::V5, u32::MAX),
        }
    }

    fn send(&mut self, packet: Packet) -> Result<(), Refusal> {
        let mut p = self.pipe.borrow_mut();
        packet
            .encode(ProtocolVersion::V5, &mut p.to_broker)
            .map_err(|e| bad(format!("the message cannot be sent as MQTT: {e}")))?;
        if let Some(w) = p.broker_waker.take() {
            w.wake();
        }
        Ok(())
    }

    /// The next packet from the broker; `None` once it closed.
    async fn recv(&mut self) -> Option<Packet> {
        poll_fn(|cx| {
            let mut p = self.pipe.borrow_mut();
            match self.decoder.decode(&mut p.from_broker) {
                Ok(Some(packet)) => return Poll::Ready(Some(packet)),
                Err(_) => return Poll::Ready(None),
                Ok(None) => {}
            }
            if p.broker_closed {
                return Poll::Ready(None);
            }
            p.client_waker = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    fn close(&mut self) {
        let mut p = self.pipe.borrow_mut();
        p.client_closed = true;
        if let Some(w) = p.broker_waker.take() {
            w.wake();
        }
    }
}

impl Drop for MemoryClient {
    fn drop(&mut self) {
        self.close();
    }
}
