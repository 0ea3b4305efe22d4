//! The one RPC route table every transport dispatches into.
//!
//! A route is registered once, typed by its request (see
//! `conclave_protocol::api::Route`); the table parses the JSON body into
//! that type, checks access and rate limits, runs the handler and counts the
//! outcome. Transports only move envelopes in and out.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::LazyLock;
use std::time::Instant;

use conclave_core::{DeviceId, ErrorCode, UserId};
use conclave_protocol::api::{Access, Route};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::api_error::ApiError;
use crate::state::AppState;
use crate::tokens::{self, TokenError};

/// An authenticated caller: a device of a user, possibly on a live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caller {
    pub user_id: UserId,
    pub device_id: DeviceId,
    /// The live session making the call, if it came over one.
    pub session_id: Option<u64>,
}

/// Everything a handler may use about the call.
#[derive(Clone)]
pub(crate) struct RpcContext {
    pub state: AppState,
    pub caller: Option<Caller>,
    pub peer_ip: IpAddr,
    pub transport: &'static str,
}

impl RpcContext {
    /// The caller of an authenticated route (the table guarantees it).
    pub fn caller(&self) -> Result<Caller, ApiError> {
        self.caller.ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "this route needs an access token",
            )
        })
    }
}

/// A route's answer, already encoded: transports copy it into their
/// envelope as it is, without building a JSON tree per call.
pub(crate) type Answer = Box<RawValue>;

type BoxedFuture = Pin<Box<dyn Future<Output = Result<Answer, ApiError>> + Send>>;
type Handler = Box<dyn Fn(RpcContext, Value) -> BoxedFuture + Send + Sync>;

pub(crate) struct RouteTable {
    routes: HashMap<&'static str, (Access, Handler)>,
}

impl RouteTable {
    /// The table with every route the server offers.
    pub fn new() -> Self {
        let mut table = Self {
            routes: HashMap::new(),
        };
        crate::services::accounts::register(&mut table);
        crate::services::messaging::register(&mut table);
        crate::services::presence::register(&mut table);
        crate::services::inbox::register(&mut table);
        crate::services::documents::register(&mut table);
        crate::services::files::register(&mut table);
        crate::services::social::register(&mut table);
        crate::services::groups::register(&mut table);
        table
    }

    /// Registers the handler of request type `R`.
    pub fn add<R, F, Fut>(&mut self, handler: F)
    where
        R: Route,
        F: Fn(RpcContext, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R::Response, ApiError>> + Send + 'static,
    {
        self.add_encoded::<R, _, _>(move |ctx, request| {
            let response = handler(ctx, request);
            async move { encode(&response.await?) }
        });
    }

    /// Registers a handler of `R` that encodes its answer itself, to reuse
    /// answers encoded before. The answer must have the shape of
    /// `R::Response`.
    pub fn add_encoded<R, F, Fut>(&mut self, handler: F)
    where
        R: Route,
        F: Fn(RpcContext, R) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Answer, ApiError>> + Send + 'static,
    {
        let boxed: Handler = Box::new(move |ctx, body| match parse_body::<R>(body) {
            Ok(request) => Box::pin(handler(ctx, request)),
            Err(err) => Box::pin(std::future::ready(Err(err))),
        });
        let previous = self.routes.insert(R::NAME, (R::ACCESS, boxed));
        assert!(previous.is_none(), "route {} registered twice", R::NAME);
    }

    /// Runs one call: route lookup, access, rate limits, handler, metrics.
    pub async fn dispatch(
        &self,
        ctx: RpcContext,
        route: &str,
        body: Value,
    ) -> Result<Answer, ApiError> {
        let started = Instant::now();
        let transport = ctx.transport;
        let (label, result) = match self.routes.get_key_value(route) {
            None => ("unknown", Err(unknown_route(route))),
            Some((name, (access, handler))) => {
                let result = match check_access(&ctx, *access) {
                    Err(err) => Err(err),
                    Ok(()) => match ctx
                        .state
                        .rate_limits
                        .check(ctx.peer_ip, ctx.caller.map(|c| c.user_id))
                    {
                        Err(err) => Err(err),
                        Ok(()) => handler(ctx, body).await,
                    },
                };
                (*name, result)
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) => err.code.as_str(),
        };
        if let Err(err) = &result {
            if err.code == ErrorCode::Internal {
                tracing::error!(route = label, error = %err.message, "route failed");
            } else {
                tracing::debug!(route = label, code = %err.code, message = %err.message, "route refused");
            }
        }
        RPC_REQUESTS
            .with_label_values(&[transport, label, outcome])
            .inc();
        RPC_DURATION
            .with_label_values(&[transport, label])
            .observe(started.elapsed().as_secs_f64());
        result.map_err(ApiError::public)
    }
}

/// Encodes a route's answer.
pub(crate) fn encode(response: &impl serde::Serialize) -> Result<Answer, ApiError> {
    serde_json::value::to_raw_value(response)
        .map_err(|err| ApiError::internal(format!("encoding response: {err}")))
}

fn unknown_route(route: &str) -> ApiError {
    let shown: String = route
        .chars()
        .take(conclave_core::limits::ROUTE_LEN_MAX_BYTES)
        .collect();
    ApiError::new(ErrorCode::UnknownRoute, format!("no route named `{shown}`"))
}

fn check_access(ctx: &RpcContext, access: Access) -> Result<(), ApiError> {
    match (access, ctx.caller) {
        (Access::Authenticated, None) => Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "this route needs an access token",
        )),
        _ => Ok(()),
    }
}

/// Parses a body into the route's request type. Errors name the field.
fn parse_body<R: Route>(body: Value) -> Result<R, ApiError> {
    let body = match body {
        Value::Null => Value::Object(serde_json::Map::new()),
        Value::Object(map) => Value::Object(map),
        other => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("the body must be a JSON object, not {}", json_kind(&other)),
            ));
        }
    };
    serde_path_to_error::deserialize(body).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let message = if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        ApiError::new(ErrorCode::BadRequest, message)
    })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Resolves a bearer token to a caller: signature, expiry, and the device's
/// current state (revoked devices and bumped epochs are refused at once).
pub(crate) async fn authenticate(
    state: &AppState,
    token: &str,
    now_secs: i64,
) -> Result<Caller, ApiError> {
    let claims = tokens::verify_access(state.secrets.token_signing_key(), token, now_secs)
        .map_err(|err| match err {
            TokenError::Expired => {
                ApiError::new(ErrorCode::TokenExpired, "the access token has expired")
            }
            TokenError::Invalid => {
                ApiError::new(ErrorCode::Unauthenticated, "the access token is not valid")
            }
        })?;
    let device = state
        .storage
        .accounts()
        .device(claims.device_id)
        .await
        .map_err(ApiError::from)?
        .filter(|device| device.user_id == claims.user_id)
        .ok_or_else(|| {
            ApiError::new(ErrorCode::Unauthenticated, "the access token is not valid")
        })?;
    if !device.is_active() {
        return Err(ApiError::new(
            ErrorCode::DeviceRevoked,
            "this device was removed from the account",
        ));
    }
    if device.token_epoch != claims.epoch {
        return Err(ApiError::new(
            ErrorCode::SessionKicked,
            "this device was signed out; log in again",
        ));
    }
    Ok(Caller {
        user_id: claims.user_id,
        device_id: claims.device_id,
        session_id: None,
    })
}

static RPC_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let counter = IntCounterVec::new(
        Opts::new(
            "conclave_rpc_requests_total",
            "RPC calls by transport, route and outcome (ok or the error code).",
        ),
        &["transport", "route", "outcome"],
    )
    .expect("valid metric");
    let _ = prometheus::register(Box::new(counter.clone()));
    counter
});

static RPC_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    let histogram = HistogramVec::new(
        HistogramOpts::new(
            "conclave_rpc_duration_seconds",
            "Time spent handling RPC calls, by transport and route.",
        )
        .buckets(vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ]),
        &["transport", "route"],
    )
    .expect("valid metric");
    let _ = prometheus::register(Box::new(histogram.clone()));
    histogram
});

/// Makes the RPC series appear before the first call.
pub(crate) fn register_metrics() {
    LazyLock::force(&RPC_REQUESTS);
    LazyLock::force(&RPC_DURATION);
}
