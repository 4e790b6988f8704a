//! [`RateLimitLayer`] and the service it wraps around another.

use super::fields;
use crate::budget::Cost;
use crate::clock::{Clock, MonotonicClock};
use crate::error::Error;
use crate::keyed::KeyedLimiter;
use http::request::Parts;
use http::{HeaderName, Request, Response, StatusCode};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The actual cost of a request, put in its *response's* extensions by the handler (in axum:
/// return `Extension(ActualCost(cost))` as a response part): the middleware then settles the
/// request's permit with it. Without it the estimate stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActualCost(
    /// The tokens the request really used (input and output), as the provider counted them.
    pub Cost,
);

/// Keys longer than this (a header or path is a stranger's input) share one key, so that an
/// oversized key can neither exhaust memory nor escape its limits.
const MAX_KEY_LEN: usize = 256;
const OVERSIZED: &str = "\u{0}oversized";

fn bounded(s: &str) -> String {
    if s.len() > MAX_KEY_LEN {
        OVERSIZED.to_string()
    } else {
        s.to_string()
    }
}

/// Keys requests by the value of header `name` (e.g. `authorization`, `x-api-key`). A request
/// without it, or with a value that is not visible ASCII, is not rate-limited by this layer:
/// reject such requests before it (or key them by something else) where that matters. Values
/// longer than 256 bytes share one key.
pub fn header_key(name: HeaderName) -> impl Fn(&Parts) -> Option<String> + Clone {
    move |p: &Parts| p.headers.get(&name)?.to_str().ok().map(bounded)
}

/// Keys requests by their path (one budget per route). Paths longer than 256 bytes share one
/// key.
pub fn path_key() -> impl Fn(&Parts) -> Option<String> + Clone {
    |p: &Parts| Some(bounded(p.uri.path()))
}

/// The default cost: one request, no tokens.
fn no_tokens(_: &Parts) -> Cost {
    Cost::ZERO
}

struct Shared<K, X, F, C: Clock, const N: usize> {
    limiter: Arc<KeyedLimiter<K, C, N>>,
    key: X,
    cost: F,
    x_ratelimit: bool,
    on_success: bool,
}

/// A `tower::Layer` admitting each request on its key's budgets (see the
/// [module docs](crate::middleware)).
///
/// ```
/// use http::HeaderName;
/// use ratekeeper::{middleware::{header_key, RateLimitLayer}, Cost, KeyedLimiter};
/// use std::sync::Arc;
///
/// // Per API key: 60 requests and 100,000 tokens per minute.
/// let tenants = Arc::new(KeyedLimiter::<String>::builder(60, 100_000).build()?);
/// let layer = RateLimitLayer::new(tenants, header_key(HeaderName::from_static("x-api-key")))
///     // The tokens a request is expected to use: here from a header the client sends.
///     .cost(|p: &http::request::Parts| {
///         let n = p.headers.get("x-max-tokens").and_then(|v| v.to_str().ok()?.parse().ok());
///         Cost::from(n.unwrap_or(1_000u64))
///     })
///     .x_ratelimit(true);
/// // axum: Router::new().route(...).layer(layer)
/// # let _ = layer;
/// # Ok::<(), ratekeeper::Error>(())
/// ```
pub struct RateLimitLayer<
    K,
    X,
    F = fn(&Parts) -> Cost,
    C: Clock = MonotonicClock,
    const N: usize = 2,
> {
    shared: Arc<Shared<K, X, F, C, N>>,
}

impl<K, X, F, C: Clock, const N: usize> Clone for RateLimitLayer<K, X, F, C, N> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<K, X, C: Clock, const N: usize> RateLimitLayer<K, X, fn(&Parts) -> Cost, C, N>
where
    X: Fn(&Parts) -> Option<K>,
{
    /// Requests keyed by `key` (`None`: not limited by this layer), one request each and no
    /// tokens until [`cost`](Self::cost) says otherwise, with the IETF fields on every
    /// response and no `x-ratelimit-*` headers.
    pub fn new(limiter: Arc<KeyedLimiter<K, C, N>>, key: X) -> Self {
        RateLimitLayer {
            shared: Arc::new(Shared {
                limiter,
                key,
                cost: no_tokens,
                x_ratelimit: false,
                on_success: true,
            }),
        }
    }
}

impl<K, X, F, C: Clock, const N: usize> RateLimitLayer<K, X, F, C, N> {
    fn map<F2>(
        self,
        f: impl FnOnce(Shared<K, X, F, C, N>) -> Shared<K, X, F2, C, N>,
    ) -> RateLimitLayer<K, X, F2, C, N> {
        let shared = Arc::try_unwrap(self.shared)
            .unwrap_or_else(|_| panic!("a layer is configured before it is cloned"));
        RateLimitLayer {
            shared: Arc::new(f(shared)),
        }
    }

    /// The tokens a request is admitted for (its estimate), from its head: a header, or an
    /// extension an earlier layer put there after reading the body.
    pub fn cost<F2: Fn(&Parts) -> Cost>(self, cost: F2) -> RateLimitLayer<K, X, F2, C, N> {
        self.map(|s| Shared {
            limiter: s.limiter,
            key: s.key,
            cost,
            x_ratelimit: s.x_ratelimit,
            on_success: s.on_success,
        })
    }

    /// Also send the `x-ratelimit-*` headers LLM providers send (default off).
    pub fn x_ratelimit(self, on: bool) -> Self {
        self.map(|s| Shared {
            x_ratelimit: on,
            ..s
        })
    }

    /// Send the rate-limit fields on admitted responses too (default on; off saves a usage
    /// read per request).
    pub fn headers_on_success(self, on: bool) -> Self {
        self.map(|s| Shared {
            on_success: on,
            ..s
        })
    }
}

impl<S, K, X, F, C: Clock, const N: usize> tower_layer::Layer<S> for RateLimitLayer<K, X, F, C, N> {
    type Service = RateLimit<S, K, X, F, C, N>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] wraps around another.
pub struct RateLimit<S, K, X, F, C: Clock = MonotonicClock, const N: usize = 2> {
    inner: S,
    shared: Arc<Shared<K, X, F, C, N>>,
}

impl<S: Clone, K, X, F, C: Clock, const N: usize> Clone for RateLimit<S, K, X, F, C, N> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// The response to a request that was not admitted: 429 with `Retry-After` for a wait, 413
/// for a cost no budget can ever hold, 503 with `Retry-After` when no key can be tracked.
fn denial<B: Default>(e: &Error) -> Response<B> {
    let mut r = Response::new(B::default());
    match e {
        Error::RateLimitExceeded(d) => {
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            fields::retry_after(r.headers_mut(), d.retry_after());
        }
        Error::InsufficientCapacity { .. } => *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE,
        _ => {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            fields::retry_after(r.headers_mut(), std::time::Duration::from_secs(1));
        }
    }
    r
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, K, X, F, C, const N: usize, ReqB, ResB> tower_service::Service<Request<ReqB>>
    for RateLimit<S, K, X, F, C, N>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: Default + Send + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    X: Fn(&Parts) -> Option<K> + Send + Sync + 'static,
    F: Fn(&Parts) -> Cost + Send + Sync + 'static,
    C: Clock + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // The service that was polled ready handles this request; a clone takes its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let Some(key) = (self.shared.key)(&parts) else {
            return Box::pin(inner.call(Request::from_parts(parts, body)));
        };
        let cost = (self.shared.cost)(&parts);
        let req = Request::from_parts(parts, body);
        let shared = self.shared.clone();
        match shared.limiter.try_acquire(&key, cost) {
            Ok(permit) => {
                let fut = inner.call(req);
                Box::pin(async move {
                    let mut resp = fut.await?;
                    match resp.extensions_mut().remove::<ActualCost>() {
                        Some(ActualCost(actual)) => {
                            let _ = shared.limiter.settle(&key, permit, actual);
                        }
                        None => drop(permit),
                    }
                    if shared.on_success {
                        let usage = shared.limiter.usage(&key);
                        fields::write(resp.headers_mut(), &usage, shared.x_ratelimit);
                    }
                    Ok(resp)
                })
            }
            Err(e) => {
                let mut resp = denial::<ResB>(&e);
                let usage = shared.limiter.usage(&key);
                fields::write(resp.headers_mut(), &usage, shared.x_ratelimit);
                Box::pin(std::future::ready(Ok(resp)))
            }
        }
    }
}
