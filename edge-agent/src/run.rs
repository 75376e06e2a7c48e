//! The running agent: wires the source, the pipeline of one reading, the queue, the sink,
//! the local actions, the metrics endpoint and the node's fleet record
//! ([`crate::runtime::heartbeat`]) together, and shuts them down in the order that loses nothing.
//!
//! Ingest: the loop takes the next MQTT message together with every one already waiting
//! behind it (up to [`MAX_BATCH`]; it never waits for more). Each is counted, the batch
//! goes through [`Pipeline::handle`] (one model call for the batch), which returns each
//! message's unit and the local actions to fire; ingest fires those, each unit (a
//! reading's records, possibly none) goes to the queue, and each message is acknowledged
//! by a separate task, in arrival order, once its unit is committed. Malformed messages
//! are counted by reason and acknowledged in turn.
//!
//! Credentials given as files are watched while the agent runs ([`crate::runtime::credentials`]):
//! the sink and the source pick up rotated tokens, passwords and certificates.
//!
//! Shutdown (SIGTERM/SIGINT): stop intake (messages not yet processed stay unacknowledged
//! at the broker), stop sync (a batch in flight stays queued and is resent with the same
//! key), let the writer commit what it received, send the acknowledgements of everything
//! committed, disconnect from the broker, stop serving metrics.

pub mod reload;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{AgentConfig, SinkSettings};
use crate::delivery::queue::{Committed, Queue, QueueConfig, QueueError, StoreSettings};
use crate::delivery::sink::http::HttpClient;
use crate::delivery::sink::mqtt::MqttSink;
use crate::delivery::sink::{self, Sink, SyncContext};
use crate::ingest::broker::{BrokerError, BrokerSettings, EmbeddedBroker};
use crate::ingest::source::mqtt::{
    self as source, Message, Receipt, SourceConnection, SourceHandle,
};
use crate::pipeline::actions::Actions;
use crate::pipeline::inference::{InferenceError, InferenceStage};
use crate::pipeline::process::{ProcessError, Processors};
use crate::pipeline::{Pipeline, Received, metrics_for};
use crate::record::{DeliveryId, UnitContent};
use crate::runtime::clock::now_ms;
use crate::runtime::credentials::{self, Client, Updates, Watch, export_expiry};
use crate::runtime::datadir::lock::{DirLock, LockError, Mode, handover_requested};
use crate::runtime::datadir::{fallback, store_pipeline};
use crate::runtime::health::{Health, Loop};
use crate::runtime::telemetry::{Metrics, MetricsError};
use crate::runtime::tls::TlsError;

/// Most messages the ingest loop takes in one turn: those already waiting, never more.
const MAX_BATCH: usize = 64;
/// How long shutdown waits for the broker to take the last acknowledgements.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the agent keeps its queue and serves its endpoint.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Directory of the queue (`queue.db`, `seq.hwm`).
    pub data_dir: PathBuf,
    /// Address of `/metrics`, `/livez` and `/readyz`.
    pub listen: SocketAddr,
    /// The pipeline file, watched for a new model reference (see [`crate::run::reload`]).
    pub config_path: Option<PathBuf>,
    /// An ordinary agent, or the node's fallback (gives the queue up when an agent asks).
    pub mode: Mode,
}

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("opening the queue: {0}")]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Processors(#[from] ProcessError),
    #[error("source: {0}")]
    SourceTls(#[source] TlsError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("sink: spec.sink.http: {0}")]
    HttpSink(#[source] sink::http::HttpSinkError),
    #[error("sink: spec.sink.mqtt: {0}")]
    MqttSink(#[source] TlsError),
    #[error("inference: {0}")]
    Inference(#[from] InferenceError),
    #[error("the data directory's lock: {0}")]
    Lock(#[from] LockError),
}

/// The problems `edge-agent check` reports beyond config validation: everything the agent
/// builds from the config before it starts (processors, TLS material, sink client).
pub fn preflight(config: &AgentConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = Processors::new(&config.spec.processors, config.source.max_devices) {
        problems.push(e.to_string());
    }
    if config.source.tls
        && let Err(e) = crate::runtime::tls::client_config(&config.source.tls_material)
    {
        problems.push(format!("spec.source.mqtt.tls: {e}"));
    }
    if let Err(e) = build_sink(config) {
        problems.push(e.to_string());
    }
    problems
}

fn build_sink(config: &AgentConfig) -> Result<Sink, RunError> {
    let format = config.spec.sink.format.unwrap_or_default();
    match &config.sink {
        SinkSettings::Http(http) => sink::http::HttpSink::new(http, &config.pipeline, &config.node)
            .map(|s| Sink::Http(Box::new(s.with_format(format))))
            .map_err(RunError::HttpSink),
        SinkSettings::Mqtt(mqtt) => sink::mqtt::MqttSink::new(mqtt)
            .map(|s| {
                Sink::Mqtt(Box::new(s.with_format(
                    format,
                    &config.pipeline,
                    &config.node,
                )))
            })
            .map_err(RunError::MqttSink),
    }
}

/// The credential files of the sink and the source, watched (see [`crate::runtime::credentials`]):
/// the sink takes its new clients from its watch, the source's updates are returned for
/// it. Exports the expiry of every certificate in use. The source's files are not watched
/// in front of the embedded broker, where the agent logs in with a login of its own.
fn watch_credentials(
    config: &AgentConfig,
    sink: Sink,
    metrics: &Metrics,
) -> (Sink, Vec<Watch>, Updates<SourceConnection>) {
    let mut watches = Vec::new();
    let sink_files = credentials::files::sink_files(&config.spec.sink);
    let sink = match (sink, &config.sink) {
        (Sink::Http(s), SinkSettings::Http(settings)) => {
            export_expiry(metrics, Client::Sink, &settings.tls_material);
            match Watch::new(Client::Sink, settings, sink_files, HttpClient::new) {
                Some((watch, updates)) => {
                    watches.push(watch);
                    Sink::Http(Box::new(s.with_updates(updates)))
                }
                None => Sink::Http(s),
            }
        }
        (Sink::Mqtt(s), SinkSettings::Mqtt(settings)) => {
            export_expiry(metrics, Client::Sink, &settings.tls_material);
            match Watch::new(Client::Sink, settings, sink_files, MqttSink::options) {
                Some((watch, updates)) => {
                    watches.push(watch);
                    Sink::Mqtt(Box::new(s.with_updates(updates)))
                }
                None => Sink::Mqtt(s),
            }
        }
        (sink, _) => sink,
    };
    if let Some(tls) = &config.source.embedded_tls {
        credentials::export_embedded_expiry(metrics, tls);
    }
    let mut source_updates = Updates::none();
    if config.source.embedded_listen.is_none() {
        export_expiry(metrics, Client::Source, &config.source.tls_material);
        let files = credentials::files::source_files(&config.spec.source.mqtt);
        if let Some((watch, updates)) =
            Watch::new(Client::Source, &config.source, files, SourceConnection::new)
        {
            watches.push(watch);
            source_updates = updates;
        }
    }
    (sink, watches, source_updates)
}

/// Runs the agent until `stop` is cancelled, then shuts down cleanly.
pub async fn run(
    config: AgentConfig,
    options: RunOptions,
    stop: CancellationToken,
) -> Result<(), RunError> {
    let metrics = Arc::new(metrics_for(&config)?);
    run_with_metrics(config, options, metrics, stop).await
}

/// An armed agent ([`edge_crds::fallback::ARMED_ENV`]) keeps what the node's fallback
/// needs in `dir`; one that is not removes it. A failure is logged: the agent runs on, the
/// node's fallback may then lack a Secret.
fn keep_fallback_snapshot(dir: &Path) {
    use crate::runtime::datadir::snapshot;
    use edge_crds::fallback::{ARMED, ARMED_ENV};
    let armed = std::env::var(ARMED_ENV).is_ok_and(|v| v == ARMED);
    let kept = if armed {
        snapshot::take(dir, Path::new("/"))
    } else {
        snapshot::clear(dir)
    };
    match kept {
        Ok(()) if armed => tracing::info!(
            dir = %dir.display(),
            "kept the pipeline's environment and mounted files for the node's fallback"
        ),
        Ok(()) => {}
        Err(e) => tracing::warn!(
            error = %e,
            armed,
            "keeping the node's fallback snapshot in the data directory"
        ),
    }
}

/// [`run`] with metrics (from [`metrics_for`]) the caller keeps reading while the agent
/// runs, as `edge-agent demo` does for its live view.
pub async fn run_with_metrics(
    config: AgentConfig,
    options: RunOptions,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> Result<(), RunError> {
    let sink = build_sink(&config)?;
    // One writer per queue: nothing (broker, queue, connections) starts before the lock.
    let lock = match DirLock::acquire(&options.data_dir, options.mode, &stop).await {
        Ok(lock) => lock,
        Err(LockError::Stopped(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if let Some(path) = &options.config_path
        && let Err(e) = store_pipeline(lock.dir(), path)
    {
        tracing::warn!(error = %e, "keeping a copy of the pipeline in the data directory");
    }
    let fallback_record = match options.mode {
        Mode::Fallback => Some(start_fallback_record(&lock, &options, &metrics, &stop)),
        Mode::Agent => {
            report_fallback(&lock, &options, &metrics);
            keep_fallback_snapshot(lock.dir());
            None
        }
    };
    for warning in config.cleartext_credentials() {
        tracing::warn!("{warning}");
    }
    let processors = Processors::new(&config.spec.processors, config.source.max_devices)?;
    let sink_timeout = match &config.sink {
        SinkSettings::Http(h) => h.timeout,
        SinkSettings::Mqtt(_) => Duration::from_secs(30),
    };
    let health = Arc::new(Health::new(
        Duration::from_secs(60).max(sink_timeout + Duration::from_secs(30)),
    ));

    // The embedded broker, when configured, listens before the source connects to it;
    // the agent's connections log in to it with the agent's own login.
    let mut config = config;
    let broker = match BrokerSettings::for_source(&config.source) {
        Some(settings) => {
            let broker = EmbeddedBroker::start(&settings)?;
            let (user, password) = settings.agent_login();
            let source = &mut config.source;
            source.username = Some(user);
            source.password = Some(password);
            if settings.tls.is_some() {
                // Behind the TLS relay: the agent connects to the broker itself.
                let local = broker.local_addr();
                (source.host, source.port, source.tls) =
                    (local.ip().to_string(), local.port(), false);
                source.url = format!("mqtt://{local}");
            }
            Some(broker)
        }
        None => None,
    };

    let (sink, watches, source_updates) = watch_credentials(&config, sink, &metrics);

    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: options.listen,
            source,
        })?;
    tracing::info!(addr = %options.listen, "serving /metrics, /livez and /readyz");
    let http_stop = CancellationToken::new();
    let http_task = tokio::spawn(crate::runtime::http::serve(
        listener,
        metrics.clone(),
        health.clone(),
        http_stop.clone(),
    ));

    let queue_config = QueueConfig {
        dir: options.data_dir.clone(),
        store: StoreSettings {
            pipeline: config.pipeline.clone(),
            node: config.node.clone(),
            max_bytes: config.buffer.max_bytes,
            max_dead_letter_bytes: config.buffer.max_dead_letter_bytes,
            when_full: config.buffer.when_full,
            durability: config.buffer.durability,
            keys: config.buffer.keys.clone(),
        },
        max_age: config.buffer.max_age,
        owner: config.uid.clone(),
        adopt_previous: config.spec.buffer.adopt_previous_queue,
    };
    let (queue, writer) = Queue::start(queue_config, metrics.clone(), health.clone()).await?;
    tracing::info!(dir = %options.data_dir.display(), "queue open");

    let sync_stop = CancellationToken::new();
    let mut sync_ctx = SyncContext::new(
        queue.clone(),
        metrics.clone(),
        health.clone(),
        sync_stop.clone(),
    );
    if let Some(limit) = &config.spec.sink.rate_limit {
        let (schedule, burst) = sink::schedule::RateSchedule::of(limit);
        sync_ctx = sync_ctx.with_rate_limit(schedule, burst);
    }
    if let Some(backlog) = &config.spec.sink.backlog {
        sync_ctx = sync_ctx.with_backlog(backlog);
    }
    let sync_task = tokio::spawn(sink::run(sink, sync_ctx));
    // The node's fleet record (after the sync context, which counts the upstream as up
    // until a request fails): a report to the cluster in any mode, never in the way.
    let heartbeat_stop = CancellationToken::new();
    let heartbeat_task = crate::runtime::heartbeat::start(&config, &metrics, &heartbeat_stop);

    let (source, messages, source_task) = source::start(
        &config.source,
        metrics.clone(),
        health.clone(),
        source_updates,
    )
    .map_err(RunError::SourceTls)?;
    let credentials_stop = CancellationToken::new();
    let credentials_task = (!watches.is_empty()).then(|| {
        tokio::spawn(credentials::run(
            watches,
            metrics.clone(),
            credentials_stop.clone(),
        ))
    });
    // Unbounded on purpose; see `Ingest::ack`.
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(acknowledge_in_order(ack_rx, source.clone()));

    let (mut actions, actions_task) =
        Actions::connect(&config, metrics.clone()).map_err(RunError::SourceTls)?;
    let mut pipeline = Pipeline::new(&config, processors, &options.data_dir, metrics.clone())?;
    // The state committed with the readings before a restart, so the restart changes
    // nothing that is forwarded.
    let saved = queue
        .load_state(Pipeline::state_fingerprint(&config))
        .await?;
    if saved.discarded {
        tracing::warn!(
            "the processors, maxDevices or the inference window changed: their saved per-device state was discarded"
        );
    }
    if !saved.rows.is_empty() {
        tracing::info!(
            entries = saved.rows.len(),
            "restored per-device processor and inference state"
        );
        pipeline.restore(&saved.rows);
    }
    drop(saved);
    let watcher = options.config_path.clone().map(|path| {
        let model = pipeline.inference().map(|s| s.inference().control());
        tokio::spawn(crate::run::reload::watch(
            path,
            config.clone(),
            model,
            stop.clone(),
        ))
    });
    if let Some(stage) = pipeline.inference() {
        wait_for_model(stage, &health, &stop).await;
    }
    tracing::info!(pipeline = %config.pipeline, node = %config.node, "agent running");
    let ingest = Ingest {
        queue,
        acks: ack_tx,
        health: health.clone(),
        metrics: metrics.clone(),
        submitted: Mutex::default(),
    };
    let result = ingest
        .run(&mut pipeline, &mut actions, messages, &stop)
        .await;

    tracing::info!("shutting down");
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    credentials_stop.cancel();
    if let Some(task) = credentials_task {
        let _ = task.await;
    }
    sync_stop.cancel();
    let _ = sync_task.await;
    heartbeat_stop.cancel();
    if let Some(task) = heartbeat_task {
        let _ = task.await;
    }
    writer.shutdown().await;
    let _ = acker.await;
    source.disconnect().await;
    actions.disconnect().await;
    let deadline = tokio::time::Instant::now() + DISCONNECT_TIMEOUT;
    for mut task in std::iter::once(source_task).chain(actions_task) {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
    drop(broker);
    if let Some(record) = fallback_record {
        record.abort();
        if let Some(mut run) = fallback::last(lock.dir()) {
            run.until = fallback::now();
            let _ = fallback::write(lock.dir(), &run);
        }
    }
    // Everything is committed, acknowledged and disconnected: the next agent may start.
    drop(lock);
    http_stop.cancel();
    let _ = http_task.await;
    tracing::info!("stopped");
    result
}

/// As the node's fallback: records the run (refreshed every few seconds) and stops when
/// an agent asks for the queue. Returns the refreshing task.
fn start_fallback_record(
    lock: &DirLock,
    options: &RunOptions,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    metrics.fallback_active.set(1);
    let dir = lock.dir().to_path_buf();
    let sha = options
        .config_path
        .as_deref()
        .and_then(fallback::pipeline_digest)
        .unwrap_or_default();
    let started = fallback::now();
    {
        let stop = stop.clone();
        let dir = dir.clone();
        tokio::spawn(async move {
            handover_requested(&dir).await;
            tracing::info!("an agent asks for the queue: stopping to hand it over");
            stop.cancel();
        });
    }
    tokio::spawn(async move {
        loop {
            let run = fallback::FallbackRun {
                started,
                until: fallback::now(),
                pipeline_sha256: sha.clone(),
                reported: false,
            };
            if let Err(e) = fallback::write(&dir, &run) {
                tracing::warn!(error = %e, "recording the fallback's run");
            }
            tokio::time::sleep(fallback::REFRESH).await;
        }
    })
}

/// As an agent: exports (and logs once) what the node's fallback last did with this queue.
fn report_fallback(lock: &DirLock, options: &RunOptions, metrics: &Metrics) {
    let Some(mut run) = fallback::last(lock.dir()) else {
        return;
    };
    let current = options
        .config_path
        .as_deref()
        .and_then(fallback::pipeline_digest)
        .unwrap_or_default();
    let outdated = run.pipeline_sha256 != current;
    metrics
        .fallback_last_seconds
        .set(run.duration().as_secs().min(i64::MAX as u64) as i64);
    metrics
        .fallback_last_end
        .set(run.until.min(i64::MAX as u64) as i64);
    metrics.fallback_last_outdated.set(i64::from(outdated));
    if !run.reported {
        tracing::warn!(
            seconds = run.duration().as_secs(),
            outdated,
            "the node ran this queue in fallback{}",
            if outdated {
                " with another revision of the pipeline than this one"
            } else {
                ""
            }
        );
        run.reported = true;
        let _ = fallback::write(lock.dir(), &run);
    }
}

/// One acknowledgement to send once its turn comes.
enum PendingAck {
    /// After the unit's commit.
    AfterCommit(oneshot::Receiver<Committed>, Receipt),
    /// Right away (a malformed message).
    Now(Receipt),
}

/// Sends acknowledgements in arrival order, each once its unit is committed. A unit that
/// was never committed (the agent stopped first) is not acknowledged, and nothing after
/// it is either: a redelivery acknowledged `Now` may stand for a unit still waiting
/// ahead of it (see [`Ingest::without_redeliveries`]).
async fn acknowledge_in_order(
    mut pending: mpsc::UnboundedReceiver<PendingAck>,
    source: SourceHandle,
) {
    while let Some(p) = pending.recv().await {
        match p {
            PendingAck::Now(m) => source.ack(m).await,
            PendingAck::AfterCommit(done, m) => {
                if done.await.is_err() {
                    break;
                }
                source.ack(m).await;
            }
        }
    }
}

struct Ingest {
    queue: Queue,
    acks: mpsc::UnboundedSender<PendingAck>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    /// The last delivery submitted under each packet id by this run (committed or still
    /// waiting to be).
    submitted: Mutex<Submitted>,
}

/// The hash of the last delivery submitted under each packet id: one slot per id, 512 KiB
/// once the broker has used them all (a hash map of the same took about 2 MiB), allocated
/// zeroed so that ids never used cost nothing.
struct Submitted {
    hashes: Vec<i64>,
    /// Bit `pkid % 64` of word `pkid / 64`: whether the slot holds a delivery.
    used: Vec<u64>,
}

impl Default for Submitted {
    fn default() -> Self {
        Self {
            hashes: vec![0; 1 << 16],
            used: vec![0; (1 << 16) / 64],
        }
    }
}

impl Submitted {
    fn insert(&mut self, id: DeliveryId) {
        let pkid = usize::from(id.pkid);
        self.hashes[pkid] = id.hash;
        self.used[pkid / 64] |= 1 << (pkid % 64);
    }

    fn contains(&self, id: DeliveryId) -> bool {
        let pkid = usize::from(id.pkid);
        self.used[pkid / 64] & (1 << (pkid % 64)) != 0 && self.hashes[pkid] == id.hash
    }
}

impl Ingest {
    async fn run(
        self,
        pipeline: &mut Pipeline,
        actions: &mut Actions,
        mut messages: mpsc::Receiver<Message>,
        stop: &CancellationToken,
    ) -> Result<(), RunError> {
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.health.beat(Loop::Ingest);
            let window_closes = pipeline.next_deadline_ms().map(|at| {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()).max(0) as u64);
                tokio::time::Instant::now() + wait
            });
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                message = messages.recv() => match message {
                    Some(m) => {
                        let batch = take_waiting(m, &mut messages, MAX_BATCH);
                        self.handle(pipeline, actions, batch).await?;
                    }
                    None => break,
                },
                _ = sleep_until(window_closes), if window_closes.is_some() => {
                    let closed = pipeline.tick(now_ms());
                    if !closed.records.is_empty() || !closed.state.is_empty() {
                        // Nothing to acknowledge: the readings were acknowledged with
                        // their units when they arrived.
                        drop(self.submit(closed, Instant::now()).await?);
                    }
                }
                _ = beat.tick() => {}
            }
        }
        // Intake stops here: what is still in the channel stays unacknowledged. Open
        // aggregate windows stay open: their state is committed and restored at start.
        drop(messages);
        Ok(())
    }

    /// Submits a unit to the queue, waiting while the queue cannot take it (a full queue
    /// under `block`).
    async fn submit(
        &self,
        content: impl Into<UnitContent>,
        received: Instant,
    ) -> Result<oneshot::Receiver<Committed>, QueueError> {
        let permit = self.beating(self.queue.reserve()).await?;
        Ok(permit.submit(content, received))
    }

    /// Leaves out the messages the broker delivered again (DUP) whose units this run
    /// already submitted (the connection dropped before their PUBACK left, and the
    /// redelivery may overtake the commit still in progress) or an earlier run committed
    /// (the PUBACK was lost with a crash). They are acknowledged in arrival order, so
    /// after the unit of their first delivery commits, counted and not processed again.
    async fn without_redeliveries(&self, batch: Vec<Message>) -> Result<Vec<Message>, RunError> {
        let mut fresh = Vec::with_capacity(batch.len());
        for m in batch {
            if m.publish.dup
                && let Some(id) = delivery(&m)
                && (self.submitted_before(id) || self.queue.delivered(id).await?)
            {
                self.metrics.messages_redelivered.inc();
                self.ack(PendingAck::Now(m.receipt()));
                continue;
            }
            fresh.push(m);
        }
        Ok(fresh)
    }

    /// The delivery of `m`, remembered as submitted by this run.
    fn submitting(&self, m: &Message) -> Option<DeliveryId> {
        let id = delivery(m)?;
        self.submitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        Some(id)
    }

    /// Whether this run submitted the unit of delivery `id`.
    fn submitted_before(&self, id: DeliveryId) -> bool {
        self.submitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    /// Hands a message to the acknowledger, never waiting. A bounded channel here closed a
    /// cycle: the source task blocks handing a message to a busy ingest loop, so it stops
    /// polling the MQTT event loop, so acknowledgements stop leaving, so the acknowledger
    /// blocks, so this channel fills, so the ingest loop blocks here and never takes the
    /// message the source task holds. Its length is still bounded: an entry is the receipt
    /// (about 50 bytes) of a unit waiting for its commit, which the queue's capacity
    /// bounds, or of a committed one waiting for the source task, which writes
    /// acknowledgements ahead of reading more.
    fn ack(&self, ack: PendingAck) {
        let _ = self.acks.send(ack);
    }

    /// Awaits `work`, beating the ingest heartbeat meanwhile: waiting for the queue or the
    /// disk is not being stuck, and liveness must not restart an agent that is only short
    /// of space or of upstream.
    async fn beating<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tokio::time::sleep(Duration::from_secs(1)) => self.health.beat(Loop::Ingest),
            }
        }
    }

    /// Performs what the pipeline makes of a batch: fires its effects, queues each
    /// message's unit (acknowledged once committed) and skips the refused ones (counted,
    /// acknowledged at once).
    async fn handle(
        &self,
        pipeline: &mut Pipeline,
        actions: &mut Actions,
        batch: Vec<Message>,
    ) -> Result<(), RunError> {
        for m in &batch {
            self.metrics.messages_received.inc();
            self.metrics
                .received_bytes
                .inc_by(m.publish.payload.len() as u64);
        }
        let batch = self.without_redeliveries(batch).await?;
        let received: Vec<Received<'_>> = batch
            .iter()
            .map(|m| Received {
                topic: &m.publish.topic,
                payload: &m.publish.payload,
                received_ms: m.received_ms,
                received: m.received,
            })
            .collect();
        let handled = pipeline.handle(&received).await;
        drop(received);
        for effect in &handled.effects {
            actions.perform(effect);
        }
        for (m, unit) in batch.into_iter().zip(handled.units) {
            match unit {
                Err(reason) => {
                    self.metrics
                        .messages_invalid
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    tracing::debug!(topic = %m.publish.topic, %reason, "skipping a malformed message");
                    self.ack(PendingAck::Now(m.receipt()));
                }
                Ok(mut unit) => {
                    unit.delivery = self.submitting(&m);
                    let done = self.submit(unit, m.received).await?;
                    self.ack(PendingAck::AfterCommit(done, m.receipt()));
                }
            }
        }
        Ok(())
    }
}

/// Longest wait at start for the model before readings are taken in without it.
const MODEL_WAIT: Duration = Duration::from_secs(30);

/// Waits (beating the ingest heartbeat) until the first model runs, is refused, or
/// [`MODEL_WAIT`] passes: readings taken in before would be acknowledged unscored (a
/// restart would change what is forwarded), so they wait at the broker instead.
async fn wait_for_model(stage: &InferenceStage, health: &Health, stop: &CancellationToken) {
    let inference = stage.inference();
    let deadline = tokio::time::Instant::now() + MODEL_WAIT;
    loop {
        health.beat(Loop::Ingest);
        let status = inference.status();
        if status.generation > 0 {
            return;
        }
        if status.refused > 0 || stop.is_cancelled() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "no model after {MODEL_WAIT:?}: taking readings in; their inferences are skipped (no_model) until one loads"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The MQTT delivery `m` came in (QoS 1 only).
fn delivery(m: &Message) -> Option<DeliveryId> {
    DeliveryId::of(m.publish.pkid, &m.publish.topic, &m.publish.payload)
}

/// `first` and whatever is already waiting behind it in `rx`, at most `max` in all, in
/// arrival order. Never waits.
fn take_waiting<T>(first: T, rx: &mut mpsc::Receiver<T>, max: usize) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
    batch
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_is_what_already_waits_never_more_than_the_cap() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 1..=5 {
            tx.send(i).await.expect("send");
        }
        assert_eq!(take_waiting(0, &mut rx, 3), [0, 1, 2]);
        assert_eq!(take_waiting(9, &mut rx, 64), [9, 3, 4, 5]);
        // Nothing waits: a batch of one, at once.
        assert_eq!(take_waiting(7, &mut rx, 64), [7]);
    }

    #[test]
    fn the_submitted_table_holds_the_last_delivery_of_each_packet_id() {
        let id = |pkid, hash| DeliveryId { pkid, hash };
        let mut t = Submitted::default();
        assert!(!t.contains(id(7, 0)), "an empty slot is not hash 0");
        t.insert(id(7, 0));
        assert!(t.contains(id(7, 0)));
        assert!(!t.contains(id(7, 1)));
        t.insert(id(7, -5));
        assert!(
            t.contains(id(7, -5)) && !t.contains(id(7, 0)),
            "the last one only"
        );
        t.insert(id(u16::MAX, 42));
        assert!(t.contains(id(u16::MAX, 42)));
        assert!(!t.contains(id(u16::MAX - 1, 42)) && !t.contains(id(63, -5)));
    }
}
