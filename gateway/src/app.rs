//! The router, its middleware (request ids, auth, metrics, body limit) and `run`, the server's
//! entry point in mini-redis's shape: a listener and a shutdown future in, nothing global.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::limit::RequestBodyLimitLayer;

use crate::error::ApiError;
use crate::extract::RequestId;
use crate::routes::{admin, chat, completions, experiments, models, ops, outcomes, shadow_score};
use crate::state::AppState;

pub fn app(state: AppState) -> Router {
    let body_limit = state.cfg.max_body_bytes;
    let upload_limit = state.cfg.max_upload_bytes;
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/shadow/score", post(shadow_score::score))
        .route("/v1/feedback", post(outcomes::feedback))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(RequestBodyLimitLayer::new(body_limit));
    // Uploads stream to disk, so only they get the (much larger) upload limit; multipart
    // reads would otherwise stop at axum's default limit.
    let uploads = Router::new()
        .route("/v1/adapters", post(admin::upload))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_auth))
        .layer(DefaultBodyLimit::max(upload_limit))
        .layer(RequestBodyLimitLayer::new(upload_limit));
    let admin = Router::new()
        .route("/v1/adapters", get(admin::list))
        .route("/v1/adapters/pull", post(admin::pull))
        .route(
            "/v1/adapters/{name}",
            get(admin::show).delete(admin::delete),
        )
        .route("/v1/load_lora_adapter", post(admin::load_lora))
        .route("/v1/unload_lora_adapter", post(admin::unload_lora))
        .route(
            "/v1/experiments",
            get(experiments::list).post(experiments::create),
        )
        .route(
            "/v1/experiments/{name}/report",
            get(outcomes::experiment_report),
        )
        .route(
            "/v1/experiments/{name}",
            get(experiments::show)
                .patch(experiments::update)
                .delete(experiments::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_auth))
        .layer(RequestBodyLimitLayer::new(body_limit));
    let routes = Router::new()
        .merge(api)
        .merge(uploads)
        .merge(admin)
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state);
    // A method router sets `Allow` on its 405 after every layer inside the router has run, so
    // only a layer around the whole router sees the methods to name.
    Router::new()
        .fallback_service(routes)
        .layer(middleware::from_fn(method_not_allowed))
}

/// axum answers a known path's wrong method with an empty 405 and an `Allow` header; this gives
/// it the OpenAI error envelope, naming the methods the path accepts, and keeps its headers.
async fn method_not_allowed(req: Request, next: Next) -> Response {
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let resp = next.run(req).await;
    // A HEAD answer has no body to put the envelope in.
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED || method == Method::HEAD {
        return resp;
    }
    let allow = resp
        .headers()
        .get(header::ALLOW)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (mut parts, _) = resp.into_parts();
    let err = ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
        allow,
    };
    let (envelope, body) = err.into_response().into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(envelope.headers);
    Response::from_parts(parts, body)
}

/// Serves until `shutdown` resolves, then refuses new requests (503) and waits up to the drain
/// timeout for running ones.
pub async fn run(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let draining = state.draining.clone();
    let drain_timeout = state.cfg.drain_timeout;
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: draining running requests");
        draining.store(true, Ordering::SeqCst);
        let _ = drained_tx.send(());
    };
    // Streams are many small writes: Nagle's algorithm would hold tokens back.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(listener, app(state)).with_graceful_shutdown(signal);
    let server = std::pin::pin!(std::future::IntoFuture::into_future(server));
    tokio::select! {
        r = server => r,
        _ = async { let _ = drained_rx.await; tokio::time::sleep(drain_timeout).await } => {
            tracing::warn!("drain timeout reached; closing remaining connections");
            Ok(())
        }
    }
}

/// Request id (taken from `x-request-id` or made), a tracing span, and the request counter.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(String::from)
        .unwrap_or_else(|| crate::state::new_id("req"));
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let start = Instant::now();
    let upload = req.uri().path() == "/v1/adapters";
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    // The body-limit layer answers a declared oversize body itself, in plain text.
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE && !json {
        let limit = if upload {
            state.cfg.max_upload_bytes
        } else {
            state.cfg.max_body_bytes
        };
        resp = ApiError::PayloadTooLarge(limit).into_response();
    }
    let status = resp.status().as_u16().to_string();
    metrics::counter!("loraplex_requests_total", "endpoint" => endpoint, "status" => status.clone()).increment(1);
    span.in_scope(|| tracing::info!(status = %status, elapsed_ms = start.elapsed().as_millis() as u64, "response"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

fn bearer(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.cfg.api_key {
        if bearer(&req) != Some(key.as_str()) {
            return ApiError::Unauthorized.into_response();
        }
    }
    if state.draining.load(Ordering::SeqCst) {
        return ApiError::Unavailable.into_response();
    }
    next.run(req).await
}

/// Admin routes take the admin key only. An inference key is recognised and refused (403), so a
/// client learns it has the wrong kind of key; no key or an unknown one is 401. A server with
/// neither key (a local development setup) leaves the admin API open, like the inference API.
async fn admin_auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = bearer(&req);
    let cfg = &state.cfg;
    let inference_key = given.is_some() && given == cfg.api_key.as_deref();
    match (&cfg.admin_api_key, &cfg.api_key) {
        (Some(admin), _) if given == Some(admin.as_str()) => {}
        (None, None) => {}
        (_, _) if inference_key => {
            return ApiError::Forbidden(
                "this key may call the inference API only; the admin API needs the admin key"
                    .into(),
            )
            .into_response()
        }
        (Some(_), _) => return ApiError::Unauthorized.into_response(),
        (None, Some(_)) => {
            return ApiError::Forbidden(
                "the admin API is disabled: start the server with --admin-api-key".into(),
            )
            .into_response()
        }
    }
    if state.draining.load(Ordering::SeqCst) {
        return ApiError::Unavailable.into_response();
    }
    next.run(req).await
}
