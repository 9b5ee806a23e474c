//! The typed, blocking client of thinclone's REST API. The CLI, the demo, the tests and the
//! benchmarks all talk to the server through it.
//!
//! Requests and answers are the `api` crate's types, and every path comes from
//! [`api::paths`], so that the client and the server cannot disagree on a field or a route.
//! Each route has one method. A request that changes something answers with an
//! [`Operation`]; [`Client::wait`] and [`Client::follow`] poll it to its end, and the
//! `*_and_wait` methods do the whole round (ask, wait, fetch the result) for callers that
//! need no progress display.
//!
//! Errors are one [`Error`] type: a 4xx or 5xx answer becomes [`Error::Api`], whose message
//! is exactly the server's; a server that cannot be reached becomes [`Error::Unreachable`],
//! whose message says how to start one; a certificate the client does not trust becomes
//! [`Error::UntrustedCertificate`], whose message says how to trust its authority; a failed
//! operation becomes [`Error::OperationFailed`], whose message is exactly the operation's
//! error.
//!
//! `https://` servers are verified against the public authorities built into the client, or
//! against a CA file only ([`Client::with_ca_file`]); see [`tls`].

mod error;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod tls;

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use api::{
    Clone, CreateClone, CreateImage, ErrorBody, ErrorCode, Health, Image, Name, Operation, OperationId, OperationState,
};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use error::{Error, Result};

/// How long to wait for a TCP connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one request may take, by default. The server answers every request within
/// about a second (a longer job goes on as an operation), but checking a source (connecting
/// to a live server) or a busy machine can stretch that.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the `*_and_wait` methods ask how an operation is going, by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// The largest answer the client reads (a long list of operations or clones).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// What a path segment may hold unencoded: letters, digits, `-`, `_` and `~`. A `.` is
/// encoded too, so that no segment can be `..`.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// The filters of [`Client::activity`].
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter {
    pub user: Option<Name>,
    pub target: Option<String>,
    pub since: Option<api::Timestamp>,
    pub limit: Option<u32>,
}

/// The body of `POST /v1/clones/{name}/start|stop|reset`: an empty object.
#[derive(Serialize)]
struct Empty {}

/// A client of one server, at a base URL like `http://127.0.0.1:7420` or
/// `https://thinclone.example.com`. Its `Debug` leaves the token out.
#[derive(Clone)]
pub struct Client {
    base_url: String,
    agent: ureq::Agent,
    /// The authorities trusted for an `https://` server instead of the built-in ones.
    ca: Option<tls::TrustedCa>,
    request_timeout: Duration,
    poll_interval: Duration,
    wait_timeout: Option<Duration>,
    /// `?wait=` on requests that change something: how long the server waits for the
    /// operation before it answers (its own default, a second, when `None`).
    answer_wait: Option<u32>,
    /// The API token sent as `Authorization: Bearer …`.
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base_url)
            .field("ca", &self.ca.as_ref().map(|ca| &ca.origin))
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("request_timeout", &self.request_timeout)
            .field("answer_wait", &self.answer_wait)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `base_url`. Nothing is sent until the first call; a bad
    /// URL is reported then, as [`Error::BadUrl`].
    pub fn new(base_url: &str) -> Client {
        Client {
            base_url: base_url.trim_end_matches('/').to_owned(),
            agent: agent(None),
            ca: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            wait_timeout: None,
            answer_wait: None,
            token: None,
        }
    }

    /// Trusts, for an `https://` server, only the certificate authorities in the PEM file at
    /// `path` (one or more `CERTIFICATE` blocks) rather than the built-in public ones. An
    /// unreadable file, or one without a usable certificate, is [`Error::BadCa`].
    pub fn with_ca_file(self, path: &Path) -> Result<Client> {
        Ok(self.trusting(tls::TrustedCa::from_file(path)?))
    }

    /// Like [`Client::with_ca_file`], from PEM text; `origin` names it in messages.
    pub fn with_ca_pem(self, pem: &[u8], origin: &str) -> Result<Client> {
        Ok(self.trusting(tls::TrustedCa::from_pem(pem, origin)?))
    }

    fn trusting(mut self, ca: tls::TrustedCa) -> Client {
        self.agent = agent(Some(&ca));
        self.ca = Some(ca);
        self
    }

    /// Sends `token` with every request (`Authorization: Bearer …`). Every route but
    /// `/v1/health` needs one.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        self
    }

    /// How long, in seconds, the server waits for an operation to end before it answers a
    /// request that changes something (`?wait=`; 0 answers at once). The server's default
    /// (a second) unless set.
    pub fn with_answer_wait(mut self, seconds: Option<u32>) -> Client {
        self.answer_wait = seconds;
        self
    }

    /// A path of a request that changes something, with `?wait=` when set.
    fn changing(&self, path: &str) -> String {
        match self.answer_wait {
            Some(seconds) => format!("{path}?wait={seconds}"),
            None => path.to_owned(),
        }
    }

    /// How long one request may take ([`DEFAULT_REQUEST_TIMEOUT`] unless set).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Client {
        self.request_timeout = timeout;
        self
    }

    /// How often the `*_and_wait` methods poll an operation ([`DEFAULT_POLL_INTERVAL`]
    /// unless set).
    pub fn with_poll_interval(mut self, interval: Duration) -> Client {
        self.poll_interval = interval;
        self
    }

    /// How long waiting for an operation may take in all before [`Error::WaitTimeout`]
    /// (no limit unless set: making an image of a large database takes hours).
    pub fn with_wait_timeout(mut self, timeout: Option<Duration>) -> Client {
        self.wait_timeout = timeout;
        self
    }

    /// The server's base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /v1/health`.
    pub fn health(&self) -> Result<Health> {
        self.get(api::paths::HEALTH)
    }

    /// `GET /v1/openapi.json`: the OpenAPI document, as the server's text.
    pub fn openapi(&self) -> Result<String> {
        let (status, text) = self.exchange(Method::Get, api::paths::OPENAPI, None::<&Empty>)?;
        self.check_status(status, &text)?;
        Ok(text)
    }

    /// `GET /v1/images`.
    pub fn list_images(&self) -> Result<Vec<Image>> {
        self.get(api::paths::IMAGES)
    }

    /// `GET /v1/images/{name}`.
    pub fn get_image(&self, name: &Name) -> Result<Image> {
        self.get(&fill(api::paths::IMAGE, "name", name.as_str()))
    }

    /// `POST /v1/images`: starts making an image.
    pub fn create_image(&self, request: &CreateImage) -> Result<Operation> {
        self.post(&self.changing(api::paths::IMAGES), request)
    }

    /// `DELETE /v1/images/{name}`: starts removing an image.
    pub fn delete_image(&self, name: &Name) -> Result<Operation> {
        self.call(Method::Delete, &self.changing(&fill(api::paths::IMAGE, "name", name.as_str())), None::<&Empty>)
    }

    /// `GET /v1/clones`.
    pub fn list_clones(&self) -> Result<Vec<Clone>> {
        self.get(api::paths::CLONES)
    }

    /// `GET /v1/clones/{name}`; its `url` carries the clone's password.
    pub fn get_clone(&self, name: &Name) -> Result<Clone> {
        self.get(&fill(api::paths::CLONE, "name", name.as_str()))
    }

    /// `POST /v1/clones`: starts making a clone.
    pub fn create_clone(&self, request: &CreateClone) -> Result<Operation> {
        self.post(&self.changing(api::paths::CLONES), request)
    }

    /// `POST /v1/clones/{name}/start`.
    pub fn start_clone(&self, name: &Name) -> Result<Operation> {
        self.post(&self.changing(&fill(api::paths::CLONE_START, "name", name.as_str())), &Empty {})
    }

    /// `POST /v1/clones/{name}/stop`.
    pub fn stop_clone(&self, name: &Name) -> Result<Operation> {
        self.post(&self.changing(&fill(api::paths::CLONE_STOP, "name", name.as_str())), &Empty {})
    }

    /// `POST /v1/clones/{name}/reset`.
    pub fn reset_clone(&self, name: &Name) -> Result<Operation> {
        self.post(&self.changing(&fill(api::paths::CLONE_RESET, "name", name.as_str())), &Empty {})
    }

    /// `POST /v1/clones/{name}/refresh`: starts remaking a clone on a newer image, keeping
    /// its name, port and password.
    pub fn refresh_clone(&self, name: &Name, request: &api::RefreshClone) -> Result<Operation> {
        self.post(&self.changing(&fill(api::paths::CLONE_REFRESH, "name", name.as_str())), request)
    }

    /// `GET /v1/clones/{name}/checkpoints`: a clone's checkpoints, oldest first.
    pub fn list_checkpoints(&self, name: &Name) -> Result<Vec<api::Checkpoint>> {
        self.get(&fill(api::paths::CLONE_CHECKPOINTS, "name", name.as_str()))
    }

    /// `POST /v1/clones/{name}/checkpoints`: starts recording a clone's state.
    pub fn create_checkpoint(&self, name: &Name, request: &api::CreateCheckpoint) -> Result<Operation> {
        self.post(&self.changing(&fill(api::paths::CLONE_CHECKPOINTS, "name", name.as_str())), request)
    }

    /// `DELETE /v1/clones/{name}/checkpoints/{checkpoint}`.
    pub fn delete_checkpoint(&self, name: &Name, checkpoint: &Name) -> Result<Operation> {
        let path = fill(&fill(api::paths::CLONE_CHECKPOINT, "name", name.as_str()), "checkpoint", checkpoint.as_str());
        self.call(Method::Delete, &self.changing(&path), None::<&Empty>)
    }

    /// `POST /v1/clones/{name}/branches`: starts making a new clone from a checkpoint of
    /// clone `name`.
    pub fn create_branch(&self, name: &Name, request: &api::CreateBranch) -> Result<Operation> {
        self.post(&self.changing(&fill(api::paths::CLONE_BRANCHES, "name", name.as_str())), request)
    }

    /// `POST /v1/clones/{name}/expiry`: when the clone is removed by itself.
    pub fn set_expiry(&self, name: &Name, request: &api::SetExpiry) -> Result<Clone> {
        self.post(&fill(api::paths::CLONE_EXPIRY, "name", name.as_str()), request)
    }

    /// `POST /v1/clones/{name}/protect`.
    pub fn protect_clone(&self, name: &Name, request: &api::Protect) -> Result<Clone> {
        self.post(&fill(api::paths::CLONE_PROTECT, "name", name.as_str()), request)
    }

    /// `POST /v1/clones/{name}/unprotect`.
    pub fn unprotect_clone(&self, name: &Name) -> Result<Clone> {
        self.post(&fill(api::paths::CLONE_UNPROTECT, "name", name.as_str()), &Empty {})
    }

    /// `POST /v1/clones/{name}/idle`: the clone's idle policy.
    pub fn set_idle(&self, name: &Name, policy: &api::IdlePolicy) -> Result<Clone> {
        self.post(&fill(api::paths::CLONE_IDLE, "name", name.as_str()), policy)
    }

    /// `POST /v1/clones/{name}/revert`: starts returning a clone to a checkpoint.
    pub fn revert_clone(&self, name: &Name, request: &api::RevertClone) -> Result<Operation> {
        self.post(&self.changing(&fill(api::paths::CLONE_REVERT, "name", name.as_str())), request)
    }

    /// `DELETE /v1/clones/{name}`: starts removing a clone.
    pub fn delete_clone(&self, name: &Name) -> Result<Operation> {
        self.call(Method::Delete, &self.changing(&fill(api::paths::CLONE, "name", name.as_str())), None::<&Empty>)
    }

    /// `GET /v1/operations`: the most recent operations, newest first.
    pub fn list_operations(&self) -> Result<Vec<Operation>> {
        self.get(api::paths::OPERATIONS)
    }

    /// `GET /v1/operations/{id}`.
    pub fn get_operation(&self, id: OperationId) -> Result<Operation> {
        self.get(&fill(api::paths::OPERATION, "id", &id.to_string()))
    }

    /// `POST /v1/operations/{id}/cancel`: stops an image's creation; an ended operation is
    /// answered as it is.
    pub fn cancel_operation(&self, id: OperationId) -> Result<Operation> {
        self.post(&fill(api::paths::OPERATION_CANCEL, "id", &id.to_string()), &Empty {})
    }

    /// Polls operation `id` every `poll_interval` until it has ended, and returns it,
    /// `succeeded` or `failed` (see [`succeeded`]). `on_progress` sees every answer,
    /// the last one included.
    pub fn wait(
        &self,
        id: OperationId,
        poll_interval: Duration,
        mut on_progress: impl FnMut(&Operation),
    ) -> Result<Operation> {
        let op = self.get_operation(id)?;
        on_progress(&op);
        self.poll(op, poll_interval, on_progress)
    }

    /// Like [`Client::wait`], from an operation already in hand (the answer to the request
    /// that started it): an operation that has already ended is returned without a call.
    pub fn follow(
        &self,
        op: Operation,
        poll_interval: Duration,
        mut on_progress: impl FnMut(&Operation),
    ) -> Result<Operation> {
        on_progress(&op);
        self.poll(op, poll_interval, on_progress)
    }

    fn poll(
        &self,
        mut op: Operation,
        interval: Duration,
        mut on_progress: impl FnMut(&Operation),
    ) -> Result<Operation> {
        let started = Instant::now();
        while op.state == OperationState::Running {
            if let Some(timeout) = self.wait_timeout {
                if started.elapsed() >= timeout {
                    return Err(Error::WaitTimeout { id: op.id, timeout });
                }
            }
            std::thread::sleep(interval);
            op = self.get_operation(op.id)?;
            on_progress(&op);
        }
        Ok(op)
    }

    /// Follows an operation to its end, without progress; a failed one is an error.
    fn finish(&self, op: Operation) -> Result<Operation> {
        succeeded(self.follow(op, self.poll_interval, |_| {})?)
    }

    /// Makes an image and returns it once it is ready.
    pub fn create_image_and_wait(&self, request: &CreateImage) -> Result<Image> {
        self.finish(self.create_image(request)?)?;
        self.get_image(&request.name)
    }

    /// Removes an image and returns the ended operation.
    pub fn delete_image_and_wait(&self, name: &Name) -> Result<Operation> {
        self.finish(self.delete_image(name)?)
    }

    /// Makes a clone and returns it once it accepts connections.
    pub fn create_clone_and_wait(&self, request: &CreateClone) -> Result<Clone> {
        self.finish(self.create_clone(request)?)?;
        self.get_clone(&request.name)
    }

    /// Starts a clone and returns it once it accepts connections.
    pub fn start_clone_and_wait(&self, name: &Name) -> Result<Clone> {
        self.finish(self.start_clone(name)?)?;
        self.get_clone(name)
    }

    /// Stops a clone and returns it, stopped.
    pub fn stop_clone_and_wait(&self, name: &Name) -> Result<Clone> {
        self.finish(self.stop_clone(name)?)?;
        self.get_clone(name)
    }

    /// Resets a clone to its image and returns it once it accepts connections again.
    pub fn reset_clone_and_wait(&self, name: &Name) -> Result<Clone> {
        self.finish(self.reset_clone(name)?)?;
        self.get_clone(name)
    }

    /// Records a clone's state and returns the new checkpoint.
    pub fn checkpoint_clone_and_wait(&self, name: &Name, request: &api::CreateCheckpoint) -> Result<api::Checkpoint> {
        self.finish(self.create_checkpoint(name, request)?)?;
        self.made_checkpoint(name, request.name.as_ref())
    }

    /// The checkpoint a `POST /v1/clones/{name}/checkpoints` that succeeded made: the one
    /// named `wanted`, or else the newest (operations on a clone run one at a time).
    pub fn made_checkpoint(&self, name: &Name, wanted: Option<&Name>) -> Result<api::Checkpoint> {
        let mut all = self.list_checkpoints(name)?;
        match wanted {
            Some(wanted) => all.into_iter().find(|c| &c.name == wanted),
            None => all.pop(),
        }
        .ok_or_else(|| Error::Decode {
            url: self.base_url().to_owned(),
            method: "GET",
            path: fill(api::paths::CLONE_CHECKPOINTS, "name", name.as_str()),
            why: "the checkpoint just made is not in the list".into(),
        })
    }

    /// Returns a clone to a checkpoint and returns it once it accepts connections again.
    pub fn revert_clone_and_wait(&self, name: &Name, request: &api::RevertClone) -> Result<Clone> {
        self.finish(self.revert_clone(name, request)?)?;
        self.get_clone(name)
    }

    /// Remakes a clone on a newer image and returns it then.
    pub fn refresh_clone_and_wait(&self, name: &Name, request: &api::RefreshClone) -> Result<Clone> {
        self.finish(self.refresh_clone(name, request)?)?;
        self.get_clone(name)
    }

    /// Removes a clone and returns the ended operation.
    pub fn delete_clone_and_wait(&self, name: &Name) -> Result<Operation> {
        self.finish(self.delete_clone(name)?)
    }

    /// `GET /v1/schedules`.
    pub fn list_schedules(&self) -> Result<Vec<api::Schedule>> {
        self.get(api::paths::SCHEDULES)
    }

    /// `GET /v1/schedules/{name}`.
    pub fn get_schedule(&self, name: &Name) -> Result<api::Schedule> {
        self.get(&fill(api::paths::SCHEDULE, "name", name.as_str()))
    }

    /// `POST /v1/schedules`.
    pub fn create_schedule(&self, request: &api::CreateSchedule) -> Result<api::Schedule> {
        self.post(api::paths::SCHEDULES, request)
    }

    /// `DELETE /v1/schedules/{name}`.
    pub fn delete_schedule(&self, name: &Name) -> Result<()> {
        self.call_empty(Method::Delete, &fill(api::paths::SCHEDULE, "name", name.as_str()))
    }

    /// `POST /v1/schedules/{name}/run`: starts a run now; the operation makes its image.
    pub fn run_schedule(&self, name: &Name) -> Result<Operation> {
        self.post(&self.changing(&fill(api::paths::SCHEDULE_RUN, "name", name.as_str())), &Empty {})
    }

    /// `GET /v1/templates`.
    pub fn list_templates(&self) -> Result<Vec<api::Template>> {
        self.get(api::paths::TEMPLATES)
    }

    /// `GET /v1/templates/{name}`.
    pub fn get_template(&self, name: &Name) -> Result<api::Template> {
        self.get(&fill(api::paths::TEMPLATE, "name", name.as_str()))
    }

    /// `POST /v1/templates`.
    pub fn create_template(&self, request: &api::CreateTemplate) -> Result<api::Template> {
        self.post(api::paths::TEMPLATES, request)
    }

    /// `DELETE /v1/templates/{name}`.
    pub fn delete_template(&self, name: &Name) -> Result<()> {
        self.call_empty(Method::Delete, &fill(api::paths::TEMPLATE, "name", name.as_str()))
    }

    /// `GET /v1/webhooks`.
    pub fn list_webhooks(&self) -> Result<Vec<api::Webhook>> {
        self.get(api::paths::WEBHOOKS)
    }

    /// `POST /v1/webhooks`: the new webhook and its secret, shown this once.
    pub fn create_webhook(&self, request: &api::CreateWebhook) -> Result<api::CreatedWebhook> {
        self.post(api::paths::WEBHOOKS, request)
    }

    /// `DELETE /v1/webhooks/{id}`.
    pub fn delete_webhook(&self, id: u64) -> Result<()> {
        self.call_empty(Method::Delete, &fill(api::paths::WEBHOOK, "id", &id.to_string()))
    }

    /// `GET /v1/webhooks/{id}/deliveries`: newest first.
    pub fn list_deliveries(&self, id: u64) -> Result<Vec<api::Delivery>> {
        self.get(&fill(api::paths::WEBHOOK_DELIVERIES, "id", &id.to_string()))
    }

    /// `GET /v1/whoami`: the user the token belongs to.
    pub fn whoami(&self) -> Result<api::User> {
        self.get(api::paths::WHOAMI)
    }

    /// `GET /v1/users` (administrators).
    pub fn list_users(&self) -> Result<Vec<api::User>> {
        self.get(api::paths::USERS)
    }

    /// `GET /v1/users/{name}`.
    pub fn get_user(&self, name: &Name) -> Result<api::User> {
        self.get(&fill(api::paths::USER, "name", name.as_str()))
    }

    /// `POST /v1/users` (administrators).
    pub fn create_user(&self, request: &api::CreateUser) -> Result<api::User> {
        self.post(api::paths::USERS, request)
    }

    /// `DELETE /v1/users/{name}` (administrators).
    pub fn delete_user(&self, name: &Name) -> Result<()> {
        self.call_empty(Method::Delete, &fill(api::paths::USER, "name", name.as_str()))
    }

    /// `GET /v1/teams`.
    pub fn list_teams(&self) -> Result<Vec<api::Team>> {
        self.get(api::paths::TEAMS)
    }

    /// `GET /v1/teams/{name}`.
    pub fn get_team(&self, name: &Name) -> Result<api::Team> {
        self.get(&fill(api::paths::TEAM, "name", name.as_str()))
    }

    /// `POST /v1/teams` (administrators).
    pub fn create_team(&self, request: &api::CreateTeam) -> Result<api::Team> {
        self.post(api::paths::TEAMS, request)
    }

    /// `DELETE /v1/teams/{name}` (administrators).
    pub fn delete_team(&self, name: &Name) -> Result<()> {
        self.call_empty(Method::Delete, &fill(api::paths::TEAM, "name", name.as_str()))
    }

    /// `PUT /v1/teams/{name}/members/{user}` (administrators).
    pub fn add_member(&self, team: &Name, user: &Name) -> Result<api::Team> {
        let path = fill(&fill(api::paths::TEAM_MEMBER, "name", team.as_str()), "user", user.as_str());
        self.call(Method::Put, &path, None::<&Empty>)
    }

    /// `DELETE /v1/teams/{name}/members/{user}` (administrators).
    pub fn remove_member(&self, team: &Name, user: &Name) -> Result<api::Team> {
        let path = fill(&fill(api::paths::TEAM_MEMBER, "name", team.as_str()), "user", user.as_str());
        self.call(Method::Delete, &path, None::<&Empty>)
    }

    /// `GET /v1/tokens`: the caller's tokens (everyone's, for an administrator).
    pub fn list_tokens(&self) -> Result<Vec<api::Token>> {
        self.get(api::paths::TOKENS)
    }

    /// `POST /v1/tokens`: a new token, with its secret (shown this once).
    pub fn create_token(&self, request: &api::CreateToken) -> Result<api::NewToken> {
        self.post(api::paths::TOKENS, request)
    }

    /// `DELETE /v1/tokens/{id}`: revokes a token.
    pub fn revoke_token(&self, id: u64) -> Result<api::Token> {
        self.call(Method::Delete, &fill(api::paths::TOKEN, "id", &id.to_string()), None::<&Empty>)
    }

    /// `GET /v1/sources`.
    pub fn list_sources(&self) -> Result<Vec<api::Source>> {
        self.get(api::paths::SOURCES)
    }

    /// `POST /v1/sources` (administrators).
    pub fn create_source(&self, request: &api::CreateSource) -> Result<api::Source> {
        self.post(api::paths::SOURCES, request)
    }

    /// `DELETE /v1/sources/{name}` (administrators).
    pub fn delete_source(&self, name: &Name) -> Result<()> {
        self.call_empty(Method::Delete, &fill(api::paths::SOURCE, "name", name.as_str()))
    }

    /// `GET /v1/agents` (administrators).
    pub fn list_agents(&self) -> Result<Vec<api::agent::Agent>> {
        self.get(api::paths::AGENTS)
    }

    /// `GET /v1/agents/{name}` (administrators).
    pub fn get_agent(&self, name: &Name) -> Result<api::agent::Agent> {
        self.get(&fill(api::paths::AGENT, "name", name.as_str()))
    }

    /// `POST /v1/agents/{name}/revoke` (administrators): the agent is refused from now on.
    pub fn revoke_agent(&self, name: &Name) -> Result<api::agent::Agent> {
        self.post(&fill(api::paths::AGENT_REVOKE, "name", name.as_str()), &Empty {})
    }

    /// `POST /v1/agents/tokens` (administrators): a one-time enrollment token.
    pub fn create_enrollment(&self, request: &api::agent::CreateEnrollment) -> Result<api::agent::Enrollment> {
        self.post(api::paths::AGENT_TOKENS, request)
    }

    /// `POST /v1/agents/join`: an agent joins with an enrollment token (no user credential).
    pub fn join_agent(&self, request: &api::agent::JoinRequest) -> Result<api::agent::Joined> {
        self.post(api::paths::AGENT_JOIN, request)
    }

    /// `GET /v1/locations`.
    pub fn list_locations(&self) -> Result<Vec<api::agent::Location>> {
        self.get(api::paths::LOCATIONS)
    }

    /// `POST /v1/locations` (administrators).
    pub fn create_location(&self, request: &api::agent::CreateLocation) -> Result<api::agent::Location> {
        self.post(api::paths::LOCATIONS, request)
    }

    /// `DELETE /v1/locations/{name}` (administrators).
    pub fn delete_location(&self, name: &Name) -> Result<()> {
        self.call_empty(Method::Delete, &fill(api::paths::LOCATION, "name", name.as_str()))
    }

    /// `GET /v1/activity`, with its filters.
    pub fn activity(&self, filter: &ActivityFilter) -> Result<Vec<api::Activity>> {
        let mut query = Vec::new();
        let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        if let Some(user) = &filter.user {
            query.push(format!("user={}", enc(user.as_str())));
        }
        if let Some(target) = &filter.target {
            query.push(format!("target={}", enc(target)));
        }
        if let Some(since) = filter.since {
            query.push(format!("since={}", enc(&since.to_string())));
        }
        if let Some(limit) = filter.limit {
            query.push(format!("limit={limit}"));
        }
        let path = if query.is_empty() {
            api::paths::ACTIVITY.to_owned()
        } else {
            format!("{}?{}", api::paths::ACTIVITY, query.join("&"))
        };
        self.get(&path)
    }

    /// A call whose answer has no body (`204 No Content`).
    fn call_empty(&self, method: Method, path: &str) -> Result<()> {
        let (status, text) = self.exchange(method, path, None::<&Empty>)?;
        self.check_status(status, &text)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::Get, path, None::<&Empty>)
    }

    fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.call(Method::Post, path, Some(body))
    }

    /// Makes one call and decodes its JSON answer.
    fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&impl Serialize>) -> Result<T> {
        let (status, text) = self.exchange(method, path, body)?;
        self.check_status(status, &text)?;
        serde_json::from_str(&text).map_err(|e| Error::Decode {
            url: self.base_url.clone(),
            method: method.as_str(),
            path: path.to_owned(),
            why: e.to_string(),
        })
    }

    /// Sends one request and reads the whole answer, whatever its status.
    fn exchange(&self, method: Method, path: &str, body: Option<&impl Serialize>) -> Result<(u16, String)> {
        check_base_url(&self.base_url)?;
        let url = format!("{}{}", self.base_url, path);
        let timeout = Some(self.request_timeout);
        let bearer = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let with_token = |r: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &bearer {
            Some(b) => r.header("authorization", b),
            None => r,
        };
        let result = match method {
            Method::Get => with_token(self.agent.get(&url)).config().timeout_global(timeout).build().call(),
            Method::Delete => with_token(self.agent.delete(&url)).config().timeout_global(timeout).build().call(),
            Method::Put => {
                let put = self.agent.put(&url);
                let put = match &bearer {
                    Some(b) => put.header("authorization", b),
                    None => put,
                };
                put.config().timeout_global(timeout).build().send_empty()
            }
            Method::Post => {
                let post = self.agent.post(&url);
                let post = match &bearer {
                    Some(b) => post.header("authorization", b),
                    None => post,
                };
                let request = post.config().timeout_global(timeout).build();
                match body {
                    Some(body) => {
                        let json = serde_json::to_vec(body).expect("the API's requests encode as JSON");
                        request.header("content-type", "application/json").send(&json[..])
                    }
                    None => request.send_empty(),
                }
            }
        };
        let mut response = result.map_err(|e| self.transport_error(method, path, e))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| self.transport_error(method, path, e))?;
        Ok((status, text))
    }

    /// Turns a 4xx or 5xx answer into [`Error::Api`]. A body that is not the API's error
    /// body (from a proxy, say) still gives a message, with the status.
    fn check_status(&self, status: u16, text: &str) -> Result<()> {
        if status < 400 {
            return Ok(());
        }
        #[derive(serde::Deserialize)]
        struct JustTheMessage {
            error: String,
        }
        let body = match serde_json::from_str::<ErrorBody>(text) {
            Ok(body) => body,
            Err(_) => {
                let code = ErrorCode::from_http_status(status);
                match serde_json::from_str::<JustTheMessage>(text) {
                    Ok(JustTheMessage { error }) => ErrorBody::new(code, error),
                    Err(_) => {
                        let base = &self.base_url;
                        let text = text.trim();
                        let error = if text.is_empty() {
                            format!("the server at {base} answered HTTP {status}")
                        } else {
                            let text: String = text.chars().take(500).collect();
                            format!("the server at {base} answered HTTP {status}: {text}")
                        };
                        ErrorBody::new(code, error)
                    }
                }
            }
        };
        Err(Error::Api { status, body })
    }

    /// Describes a failure to talk to the server at all.
    fn transport_error(&self, method: Method, path: &str, e: ureq::Error) -> Error {
        if let Some(tls_error) = tls::rustls_error(&e) {
            return tls::describe(tls_error, &self.base_url, self.ca.as_ref());
        }
        let url = self.base_url.clone();
        let unreachable = |why: &str| Error::Unreachable { url: url.clone(), why: why.to_owned() };
        let other =
            |why: String| Error::Transport { url: url.clone(), method: method.as_str(), path: path.to_owned(), why };
        match e {
            ureq::Error::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => unreachable("connection refused"),
                io::ErrorKind::AddrNotAvailable => unreachable("address not available"),
                io::ErrorKind::NetworkUnreachable => unreachable("network unreachable"),
                io::ErrorKind::HostUnreachable => unreachable("host unreachable"),
                io::ErrorKind::NotFound => unreachable("not found"),
                _ => other(e.to_string()),
            },
            ureq::Error::HostNotFound => unreachable("host not found"),
            ureq::Error::ConnectionFailed => unreachable("connection failed"),
            ureq::Error::Timeout(ureq::Timeout::Connect) => {
                unreachable(&format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()))
            }
            ureq::Error::Timeout(_) => Error::Timeout {
                url: url.clone(),
                method: method.as_str(),
                path: path.to_owned(),
                timeout: self.request_timeout,
            },
            ureq::Error::BadUri(why) => Error::BadUrl { url: url.clone(), why },
            // What a TLS server sends back to plain HTTP is not HTTP.
            ureq::Error::Protocol(e) if url.starts_with("http://") => {
                other(format!("{e}; if the server serves https, use an https:// URL"))
            }
            e => other(e.to_string()),
        }
    }
}

/// The HTTP agent of a client: TLS verified against the built-in authorities or `ca`'s.
fn agent(ca: Option<&tls::TrustedCa>) -> ureq::Agent {
    ureq::Agent::config_builder()
        // 4xx and 5xx answers carry the server's message in their body: read it.
        .http_status_as_error(false)
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .user_agent(concat!("thinclone/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls::config(ca))
        .build()
        .new_agent()
}

/// Checks that a base URL is one the client can use: `http://HOST[:PORT]` or
/// `https://HOST[:PORT]`, with at most a path prefix.
fn check_base_url(base: &str) -> Result<()> {
    let bad = |why: String| Err(Error::BadUrl { url: base.to_owned(), why });
    match url::Url::parse(base) {
        Err(e) => bad(e.to_string()),
        Ok(url) if url.scheme() != "http" && url.scheme() != "https" => {
            bad(format!("the scheme is {:?}, and this client speaks http and https only", url.scheme()))
        }
        Ok(url) if url.host_str().is_none_or(str::is_empty) => bad("it has no host".to_owned()),
        Ok(url) if url.query().is_some() || url.fragment().is_some() => bad("it has a query or a fragment".to_owned()),
        Ok(_) => Ok(()),
    }
}

/// An ended operation as a result: `Ok` when it succeeded, [`Error::OperationFailed`] when
/// it failed. An operation still running is returned as it is.
pub fn succeeded(op: Operation) -> Result<Operation> {
    match op.state {
        OperationState::Failed => Err(Error::OperationFailed(Box::new(op))),
        OperationState::Succeeded | OperationState::Running => Ok(op),
    }
}

/// A route's path with its one `{key}` filled in by `value`, percent-encoded as one path
/// segment: whatever `value` holds, it cannot name another route.
fn fill(template: &str, key: &str, value: &str) -> String {
    let placeholder = format!("{{{key}}}");
    debug_assert!(template.contains(&placeholder), "{template} has no {placeholder}");
    template.replace(&placeholder, &utf8_percent_encode(value, SEGMENT).to_string())
}

#[cfg(test)]
mod tests;
