//! The `EdgePipeline` spec: what one pipeline reads, how it filters, what it infers,
//! where it buffers and where it sends.
//!
//! Doc comments on these types are user documentation: they become the CRD's
//! descriptions and so the text of `kubectl explain edgepipeline.spec...`.
//! "Exactly one of" choices are plain structs of optional fields with a CEL rule, so the
//! manifest reads naturally (`- deadband: {absolute: 0.5}`) and the API server rejects
//! ambiguous objects at admission.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::{Duration, Size};

/// Desired state of an edge data pipeline: read sensor readings from MQTT, filter and
/// aggregate them, run anomaly inference, buffer durably on the node and sync upstream.
#[cfg_attr(
    feature = "kube",
    derive(kube::CustomResource),
    kube(
        group = "edgepipe.dev",
        version = "v1alpha1",
        kind = "EdgePipeline",
        plural = "edgepipelines",
        singular = "edgepipeline",
        shortname = "epl",
        category = "edgepipe",
        namespaced,
        doc = "An edge data pipeline: MQTT readings on the selected nodes are filtered, checked for anomalies, buffered durably and synced upstream.",
        status = "crate::status::EdgePipelineStatus",
        printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
        printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.readyNodes","description":"Nodes whose agent is ready"}"#,
        printcolumn = r#"{"name":"Offline","type":"integer","jsonPath":".status.offlineNodes","description":"Nodes of this pipeline that are NotReady or unreachable"}"#,
        printcolumn = r#"{"name":"Down","type":"integer","jsonPath":".status.fleet.upstreamDown","description":"Online agents whose upstream is down"}"#,
        printcolumn = r#"{"name":"Backlog","type":"string","jsonPath":".status.fleet.backlog","description":"Bytes queued on all nodes"}"#,
        printcolumn = r#"{"name":"Oldest","type":"string","jsonPath":".status.fleet.oldestBacklog","description":"Age of the oldest queued record on any node"}"#,
        printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredNodes","priority":1}"#,
        printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
    )
)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.processors) || self.processors.all(p, !has(p.aggregate)) || (has(self.processors[size(self.processors) - 1].aggregate) && self.processors.filter(p, has(p.aggregate)).size() == 1)", "message": "aggregate must be the last processor", "fieldPath": ".processors"},
    {"rule": "!has(self.actions) || !has(self.inference) || self.actions.all(a, !has(a.clearBelow) || a.clearBelow <= self.inference.threshold)", "message": "an action's clearBelow must be <= inference.threshold", "fieldPath": ".actions"},
    {"rule": "!has(self.actions) || has(self.inference) || self.actions.all(a, !has(a.trigger) || a.trigger == 'threshold')", "message": "an anomaly or classification action needs spec.inference", "fieldPath": ".actions"},
    {"rule": "!has(self.actions) || self.actions.all(a, !has(a.trigger) || a.trigger != 'threshold') || (has(self.processors) && self.processors.exists(p, has(p.threshold)))", "message": "a threshold action needs a threshold processor", "fieldPath": ".actions"},
    {"rule": "!has(self.inference) || !has(self.inference.task) || self.inference.task != 'classification' || (has(self.source.format) && has(self.source.format.encoding) && self.source.format.encoding == 'image')", "message": "task: classification needs source.format.encoding: image", "fieldPath": ".inference.task"},
    {"rule": "!has(self.inference) || !has(self.source.format) || !has(self.source.format.encoding) || self.source.format.encoding != 'image' || (has(self.inference.task) && self.inference.task == 'classification')", "message": "image payloads need inference.task: classification", "fieldPath": ".inference.task"}
]))]
pub struct EdgePipelineSpec {
    /// Where readings come from: an MQTT broker on (or embedded in) the edge node, and how
    /// to read a value, a device id and a timestamp out of each message.
    pub source: Source,

    /// Optional TFLite anomaly detection (or image classification) run on every raw
    /// reading, before the processors. Anomalies always travel upstream and trigger
    /// `actions`, whatever the processors drop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<Inference>,

    /// Ordered processing stages applied per device. They decide which routine readings
    /// travel upstream; a reading must pass every stage. Empty means every reading travels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub processors: Vec<Processor>,

    /// Local actions published immediately on the source broker (never queued), e.g. an
    /// alert on `alerts/{device}` when an anomaly is detected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub actions: Vec<Action>,

    /// The durable on-node queue that holds records until the sink acknowledges them.
    #[serde(default)]
    pub buffer: Buffer,

    /// Where records are sent when the link is up: an HTTP ingest API or an MQTT broker.
    pub sink: Sink,

    /// Cluster only: run the agent on nodes with these labels
    /// (ignored when the agent runs standalone).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Cluster only: tolerations for the agent pods, e.g. to run on tainted edge nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub tolerations: Vec<Toleration>,

    /// Cluster only: how the agent pods are run.
    #[serde(default)]
    pub agent: AgentSettings,

    /// Cluster only: how a change reaches the nodes. The operator replaces the agents node
    /// by node (`maxUnavailable` at a time), canary nodes first if asked, and pauses a
    /// rollout whose new agents fail. Not part of the agent's configuration: changing it
    /// rolls nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSettings>,
}

/// Where readings come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.maxPayloadSize) || quantity(self.maxPayloadSize).isGreaterThan(quantity('0'))", "message": "maxPayloadSize must be > 0", "fieldPath": ".maxPayloadSize"},
    {"rule": "!has(self.maxPayloadSize) || !quantity(self.maxPayloadSize).isGreaterThan(quantity('16Mi'))", "message": "maxPayloadSize must be at most 16Mi", "fieldPath": ".maxPayloadSize"}
]))]
pub struct Source {
    /// The MQTT broker and topics to subscribe to.
    pub mqtt: MqttSource,

    /// How to read value, device and timestamp out of a message.
    #[serde(default)]
    pub format: PayloadFormat,

    /// Messages larger than this are counted as invalid (`too_large`), acknowledged and
    /// skipped, whatever their size. At most `16Mi`.
    #[serde(default = "default_max_payload_size")]
    pub max_payload_size: Size,

    /// Upper bound on the number of devices whose processor and inference state is kept.
    /// When exceeded, the least recently seen device's state is evicted and counted. At
    /// most 100000; a device id is at most 128 bytes, so this bounds that state in bytes.
    #[serde(default = "default_max_devices")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_devices: u32,
}

fn default_max_payload_size() -> Size {
    Size::new("64Ki")
}
fn default_max_devices() -> u32 {
    10_000
}

/// An MQTT broker to subscribe to, on the node or embedded in the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.url) || has(self.embedded)", "message": "set url, or embedded to run a broker inside the agent"},
    {"rule": "self.qos == 0 || self.qos == 1", "message": "qos must be 0 or 1"},
    {"rule": "size(self.topics) > 0", "message": "at least one topic is required"},
    {"rule": "!has(self.passwordFrom) || has(self.username)", "message": "username is required when passwordFrom is set", "fieldPath": ".username"},
    {"rule": "!has(self.keepAlive) || duration(self.keepAlive) > duration('0s')", "message": "keepAlive must be > 0", "fieldPath": ".keepAlive"},
    {"rule": "!has(self.embedded) || self.embedded.listen.startsWith('127.') || self.embedded.listen.startsWith('[::1]:') || (has(self.embedded.users) && size(self.embedded.users) > 0) || (has(self.username) && has(self.passwordFrom))", "fieldPath": ".embedded.users", "reason": "FieldValueRequired", "message": "embedded.users is required when embedded.listen is not a loopback address"},
    {"rule": "!has(self.tls) || (has(self.url) && self.url.startsWith('mqtts://'))", "message": "tls is only used with an mqtts:// url", "fieldPath": ".tls"}
]))]
pub struct MqttSource {
    /// Broker URL, `mqtt://host:1883` or `mqtts://host:8883`. `${VAR}` is expanded from
    /// the agent's environment: inside a pod use `mqtt://${HOST_IP}:1883` to reach a broker
    /// on the node. Defaults to the embedded broker when `embedded` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^mqtts?://.+"))]
    pub url: Option<String>,

    /// Topic filters to subscribe to; MQTT wildcards `+` and `#` are allowed.
    #[schemars(length(max = 64))]
    pub topics: Vec<String>,

    /// Subscription QoS. With 1 (the default) a message is acknowledged to the broker only
    /// after its outcome is durable in the queue, so nothing acknowledged is lost.
    #[serde(default = "default_qos")]
    pub qos: u8,

    /// MQTT client id. Defaults to `<namespace>-<name>-<node>`, stable across restarts so
    /// the broker keeps the persistent session while the agent restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub client_id: Option<String>,

    /// MQTT username, if the broker requires one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,

    /// Where the MQTT password comes from (a Secret, an environment variable or a file);
    /// never inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_from: Option<ValueFrom>,

    /// TLS settings for `mqtts://` URLs (an error with `mqtt://`, which would ignore them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,

    /// MQTT keep-alive interval.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: Duration,

    /// Run an MQTT broker inside the agent so the node needs no separate broker. In a
    /// cluster the operator exposes its port on the node with a hostPort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<EmbeddedBroker>,
}

fn default_qos() -> u8 {
    1
}
fn default_keep_alive() -> Duration {
    Duration::new("30s")
}

/// An MQTT broker embedded in the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddedBroker {
    /// Address the embedded broker listens on. The default, `127.0.0.1:1883`, takes
    /// clients of this host only (in a pod: of the pod only). Any other address, such as
    /// `0.0.0.0:1883` for devices on the plant network, requires `users`.
    #[serde(default = "default_embedded_listen")]
    pub listen: String,

    /// Who may connect, and what each may publish and subscribe to. With users set,
    /// anonymous clients are refused; a client breaking its rules is disconnected. The
    /// agent connects with credentials of its own, and no other client may use its
    /// client ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub users: Vec<EmbeddedUser>,

    /// Serve MQTT over TLS (`mqtts://` for devices) with this certificate; with
    /// `clientCa`, devices must also present a certificate it signed. The agent itself
    /// connects over loopback inside the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EmbeddedTls>,
}

/// The embedded broker's TLS server identity, and the CA of client certificates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddedTls {
    /// PEM server certificate chain.
    pub cert: ValueFrom,
    /// PEM private key of the server certificate.
    pub key: ValueFrom,
    /// PEM CA bundle: when set, every client must present a certificate it signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<ValueFrom>,
}

fn default_embedded_listen() -> String {
    "127.0.0.1:1883".to_string()
}

/// A client of the embedded broker: its credentials and its topics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmbeddedUser {
    /// Username.
    #[schemars(length(min = 1, max = 128))]
    pub username: String,

    /// Where the password comes from (a Secret, an environment variable or a file).
    pub password_from: ValueFrom,

    /// Topic filters this user may publish to, e.g. `sensors/{username}/#`, where
    /// `{username}` stands for the username. Empty: no publishing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub publish: Vec<String>,

    /// Topic filters this user may subscribe to (a subscription must lie within one of
    /// them), e.g. `alerts/{username}`. Empty: no subscribing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub subscribe: Vec<String>,
}

/// Where a secret value (password, token, PEM) comes from. Exactly one field is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.secretKeyRef), has(self.env), has(self.file)].filter(x, x).size() == 1", "message": "exactly one of secretKeyRef, env or file must be set"}
]))]
pub struct ValueFrom {
    /// A key of a Secret in the pipeline's namespace (cluster only): the operator mounts
    /// the Secret into the agent pod and the agent reads the key as a file, never from an
    /// environment variable. A new value of the key rolls the agents. The Secret must
    /// carry the label `edgepipe.dev/allow-pipelines: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,

    /// Name of an environment variable of the agent holding the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,

    /// Path of a file holding the value (trailing newline removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// A reference to one key of a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Name of the Secret, in the pipeline's namespace.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}

/// TLS client settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.cert) == has(self.key)", "message": "cert and key must be set together"}
]))]
pub struct Tls {
    /// PEM bundle of CA certificates to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<ValueFrom>,
    /// PEM client certificate for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<ValueFrom>,
    /// PEM private key of the client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<ValueFrom>,
}

/// How to read a reading out of an MQTT message. A JSON object payload is read with
/// dotted paths; a bare number payload is the value itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PayloadFormat {
    /// Dotted path of the numeric value in a JSON payload, e.g. `value` or `data.temp`.
    #[serde(default = "default_value_path")]
    pub value: String,

    /// Where the device id comes from: a dotted path in the payload (`device_id`), or a
    /// topic segment written `topic[N]` (0-based: `topic[1]` of `sensors/t1/temperature`
    /// is `t1`).
    #[serde(default = "default_device_path")]
    pub device: String,

    /// Dotted path of the timestamp: unix seconds, unix milliseconds or RFC 3339.
    /// A missing timestamp means the time the agent received the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,

    /// `json` for sensor readings (JSON or bare numbers); `image` for JPEG/PNG payloads
    /// fed to an image classification model.
    #[serde(default)]
    pub encoding: PayloadEncoding,
}

impl Default for PayloadFormat {
    fn default() -> Self {
        Self {
            value: default_value_path(),
            device: default_device_path(),
            timestamp: Some("timestamp".to_string()),
            encoding: PayloadEncoding::default(),
        }
    }
}

fn default_value_path() -> String {
    "value".to_string()
}
fn default_device_path() -> String {
    "device_id".to_string()
}

/// Encoding of MQTT payloads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PayloadEncoding {
    /// A JSON object (read with the dotted paths) or a bare number.
    #[default]
    Json,
    /// A JPEG or PNG image.
    Image,
}

/// TFLite inference on the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.window > 0", "message": "window must be > 0"},
    {"rule": "self.topK > 0", "message": "topK must be > 0"},
    {"rule": "!has(self.timeout) || duration(self.timeout) > duration('0s')", "message": "timeout must be > 0", "fieldPath": ".timeout"},
    {"rule": "!has(self.input) || (has(self.task) && self.task == 'classification')", "message": "input is only for task: classification (readings use normalize)", "fieldPath": ".input"},
    {"rule": "!has(self.labelsFile) || (!self.labelsFile.contains(':') && !self.labelsFile.contains('\\\\') && !self.labelsFile.startsWith('//'))", "message": "labelsFile is a file next to the model, not a URL", "fieldPath": ".labelsFile"}
]))]
pub struct Inference {
    /// Where the model file comes from.
    pub model: ModelSource,

    /// `anomaly`: a per-device window of readings in, one score out. `classification`: an
    /// image in, class scores out (needs `source.format.encoding: image`).
    #[serde(default)]
    pub task: InferenceTask,

    /// Anomaly task: number of most recent raw readings per device fed to the model, as a
    /// `[1, window]` float32 tensor.
    #[serde(default = "default_window")]
    pub window: u32,

    /// Anomaly task: a score above this is an anomaly.
    #[serde(default = "default_score_threshold")]
    pub threshold: f64,

    /// Anomaly task: how readings are normalised before they reach the model (use the
    /// statistics the model was trained with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalize>,

    /// Known inputs and outputs checked every time a model is loaded; a model whose
    /// outputs diverge is refused and the previous model (if any) keeps running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden: Option<Golden>,

    /// Classification task: class labels, one per model output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    pub labels: Vec<String>,

    /// Classification task: a labels file (one label per line) next to the model, by file
    /// name (for `configMap` models, a key of the same ConfigMap; for `url` models, a path
    /// relative to the model's URL on the same server, never a URL of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_file: Option<String>,

    /// Classification task: how many of the best classes to report.
    #[serde(default = "default_top_k")]
    pub top_k: u32,

    /// Classification task: how an image becomes the model's input. Default: RGB values in
    /// [0, 1] after a bilinear resize to the model's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<ImageInput>,

    /// An inference that takes longer than this is abandoned and counted; the data path
    /// keeps going.
    #[serde(default = "default_inference_timeout")]
    pub timeout: Duration,
}

fn default_window() -> u32 {
    16
}
fn default_score_threshold() -> f64 {
    0.8
}
fn default_top_k() -> u32 {
    3
}
fn default_inference_timeout() -> Duration {
    Duration::new("1s")
}

/// What the model computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum InferenceTask {
    /// A window of readings in, an anomaly score out.
    #[default]
    Anomaly,
    /// An image in, class scores out.
    Classification,
}

/// Where a model comes from. Exactly one of `path`, `configMap` or `url` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.path), has(self.configMap), has(self.url)].filter(x, x).size() == 1", "message": "exactly one of path, configMap or url must be set"},
    {"rule": "!has(self.url) || has(self.sha256)", "message": "url requires sha256"},
    {"rule": "!has(self.sha256) || has(self.url)", "message": "sha256 is only used with url"},
    {"rule": "!has(self.headers) || size(self.headers) == 0 || has(self.url)", "message": "headers are only used with url", "fieldPath": ".headers"}
]))]
pub struct ModelSource {
    /// A model file on the node or in the agent image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,

    /// A model stored in a ConfigMap (small models); the operator mounts it and updating
    /// the ConfigMap swaps the model without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapKey>,

    /// An HTTP(S) URL the agent downloads the model from; cached on the node, used while
    /// offline, and never run unless it matches `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://.+"))]
    pub url: Option<String>,

    /// Lowercase hex SHA-256 of the file at `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,

    /// Request headers for downloading `url` and the golden and labels files beside it,
    /// e.g. an `Authorization` token from a Secret. They are sent to the model's origin
    /// only: redirects are followed within that origin and nowhere else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<Header>,
}

/// One key of a ConfigMap in the pipeline's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapKey {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key holding the model (use `binaryData` for binary files).
    #[schemars(length(min = 1))]
    pub key: String,
}

/// How an image becomes a classification model's input (`inference.input`): resized to
/// the model's height and width with `resize`, each RGB value scaled to [0, 1], then
/// `(x - mean) / std` per channel. MobileNet's [-1, 1]: `mean: [0.5], std: [0.5]`;
/// ImageNet statistics: `mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]`;
/// [0, 255]: `std: [0.00392156862745098]` (1/255).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.mean) || size(self.mean) == 0 || size(self.mean) == 1 || size(self.mean) == 3", "message": "mean takes one value for every channel or three (R, G, B)", "fieldPath": ".mean"},
    {"rule": "!has(self.std) || size(self.std) == 0 || size(self.std) == 1 || size(self.std) == 3", "message": "std takes one value for every channel or three (R, G, B)", "fieldPath": ".std"},
    {"rule": "!has(self.std) || self.std.all(s, s > 0.0)", "message": "std values must be > 0", "fieldPath": ".std"}
]))]
pub struct ImageInput {
    /// Subtracted from each channel after scaling to [0, 1]: one value, or R, G, B
    /// (default 0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub mean: Vec<f64>,
    /// Then each channel is divided by it: one value, or R, G, B (default 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub std: Vec<f64>,
    /// The filter that resizes the image to the model's size (default `bilinear`, which
    /// matches Pillow's `BILINEAR` that most reference pre-processing uses).
    #[serde(default)]
    pub resize: ResizeFilter,
}

/// How an image is resized (`inference.input.resize`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ResizeFilter {
    /// Linear interpolation, area-aware when shrinking (Pillow's `BILINEAR`).
    #[default]
    Bilinear,
    /// The nearest pixel.
    Nearest,
    /// Cubic interpolation (Catmull-Rom).
    Bicubic,
}

/// Normalisation applied to each reading before inference: either `(x - mean) / std` or
/// `(x - min) / (max - min)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.mean) && has(self.std) && !has(self.min) && !has(self.max)) || (has(self.min) && has(self.max) && !has(self.mean) && !has(self.std))", "message": "set either mean and std, or min and max"},
    {"rule": "!has(self.std) || self.std > 0.0", "message": "std must be > 0"},
    {"rule": "!has(self.min) || !has(self.max) || self.max > self.min", "message": "max must be > min"}
]))]
pub struct Normalize {
    /// Mean of the training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    /// Standard deviation of the training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    /// Minimum of the training range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Maximum of the training range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Golden vectors: inputs with the outputs a reference interpreter produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.file) || (has(self.vectors) && size(self.vectors) > 0)", "message": "set file or vectors"},
    {"rule": "!has(self.tolerance) || self.tolerance > 0.0", "message": "tolerance must be > 0", "fieldPath": ".tolerance"},
    {"rule": "!has(self.file) || (!self.file.contains(':') && !self.file.contains('\\\\') && !self.file.startsWith('//'))", "message": "file is a file next to the model, not a URL", "fieldPath": ".file"}
]))]
pub struct Golden {
    /// A golden JSON file next to the model, by file name (for `configMap` models, a key
    /// of the same ConfigMap; for `url` models, a path relative to the model's URL on the
    /// same server, never a URL of its own):
    /// `{"vectors": [{"input": [...], "output": [...]}]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,

    /// Inline golden vectors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub vectors: Vec<GoldenVector>,

    /// Largest absolute difference allowed between the model's output and the golden one.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

fn default_tolerance() -> f64 {
    1e-5
}

/// One golden input and its expected output, both flattened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "size(self.input) > 0 && size(self.output) > 0", "message": "input and output must not be empty"}
]))]
pub struct GoldenVector {
    /// Flattened model input.
    pub input: Vec<f32>,
    /// Flattened expected model output.
    pub output: Vec<f32>,
}

/// One processing stage. Exactly one field is set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.significantChange), has(self.deadband), has(self.range), has(self.threshold), has(self.aggregate)].filter(x, x).size() == 1", "message": "exactly one of significantChange, deadband, range, threshold or aggregate must be set"}
]))]
pub struct Processor {
    /// Pass a reading when it differs from the moving average of the device's last
    /// `window` values (the new one included) by more than `threshold`. A device's first
    /// reading never passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub significant_change: Option<SignificantChange>,

    /// Pass a reading when it moved more than a dead band away from the last value that
    /// passed; send a heartbeat after `maxSilence` without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband: Option<Deadband>,

    /// Pass readings inside `[min, max]` (drops sensor glitches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<Range>,

    /// Pass readings above `above` or below `below` (the original "value > 100" rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,

    /// Replace readings by one aggregate record per device and tumbling time window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<Aggregate>,
}

/// The significant-change rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.window > 0", "message": "window must be > 0"},
    {"rule": "self.threshold >= 0.0", "message": "threshold must be >= 0"}
]))]
pub struct SignificantChange {
    /// Number of most recent values (the new one included) the moving average covers.
    #[serde(default = "default_sc_window")]
    pub window: u32,
    /// Minimum absolute difference between a value and the moving average.
    pub threshold: f64,
}

fn default_sc_window() -> u32 {
    10
}

/// The dead-band rule: `absolute` or `percent` (of the last passed value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.absolute) != has(self.percent)", "message": "exactly one of absolute or percent must be set"},
    {"rule": "!has(self.absolute) || self.absolute > 0.0", "message": "absolute must be > 0"},
    {"rule": "!has(self.percent) || self.percent > 0.0", "message": "percent must be > 0"},
    {"rule": "!has(self.maxSilence) || duration(self.maxSilence) > duration('0s')", "message": "maxSilence must be > 0", "fieldPath": ".maxSilence"}
]))]
pub struct Deadband {
    /// Dead band in the value's unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absolute: Option<f64>,
    /// Dead band in percent of the last passed value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Pass the next reading anyway after this long without one passing (a heartbeat that
    /// proves the sensor is alive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_silence: Option<Duration>,
}

/// The range rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.min) || has(self.max)", "message": "set min, max or both"},
    {"rule": "!has(self.min) || !has(self.max) || self.min <= self.max", "message": "min must be <= max"}
]))]
pub struct Range {
    /// Smallest value that passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest value that passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// The threshold rule. With both set, a reading passes when it is above `above` or
/// below `below`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.above) || has(self.below)", "message": "set above, below or both"}
]))]
pub struct Threshold {
    /// Pass readings strictly greater than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Pass readings strictly less than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
}

/// Tumbling-window aggregation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(self.window) > duration('0s')", "message": "window must be > 0"},
    {"rule": "size(self.functions) > 0", "message": "at least one function is required"}
]))]
pub struct Aggregate {
    /// Window length; a window closes by the clock even if no further reading arrives.
    pub window: Duration,
    /// Statistics computed for each window.
    #[serde(default = "default_functions")]
    #[schemars(length(max = 6))]
    pub functions: Vec<AggregateFunction>,
}

fn default_functions() -> Vec<AggregateFunction> {
    vec![
        AggregateFunction::Mean,
        AggregateFunction::Min,
        AggregateFunction::Max,
        AggregateFunction::Count,
        AggregateFunction::Last,
    ]
}

/// A statistic over a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AggregateFunction {
    /// Arithmetic mean.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Number of readings.
    Count,
    /// Sum of values.
    Sum,
    /// Most recent value.
    Last,
}

impl AggregateFunction {
    /// The name used in records and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Min => "min",
            Self::Max => "max",
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Last => "last",
        }
    }
}

/// A local action, published immediately on the source broker, once per episode and
/// device: an episode starts when the trigger's condition becomes true for a device (one
/// message) and ends when its clearing condition has held for `clearAfter` readings in a
/// row (optionally a `resolved` message). Readings in between publish nothing; anomaly
/// records still travel upstream, each of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.clearBelow) || (has(self.trigger) && self.trigger == 'anomaly')", "message": "clearBelow is only used with trigger: anomaly", "fieldPath": ".clearBelow"},
    {"rule": "!has(self.hysteresis) || (has(self.trigger) && self.trigger == 'threshold')", "message": "hysteresis is only used with trigger: threshold", "fieldPath": ".hysteresis"},
    {"rule": "!has(self.hysteresis) || self.hysteresis >= 0.0", "message": "hysteresis must be >= 0", "fieldPath": ".hysteresis"},
    {"rule": "!has(self.clearAfter) || self.clearAfter >= 1", "message": "clearAfter must be >= 1", "fieldPath": ".clearAfter"},
    {"rule": "!has(self.trigger) || self.trigger != 'classification' || (!has(self.clearAfter) && !has(self.resolved))", "message": "a classification is a single event with nothing to clear: clearAfter and resolved are not used", "fieldPath": ".resolved"}
]))]
#[schemars(transform = crate::renamed::action_schema)]
pub struct Action {
    /// Required. What triggers the action: `anomaly` (inference score above threshold),
    /// `threshold` (a reading passing a threshold processor) or `classification` (an
    /// image classified by inference). Formerly `on`, a key kubectl and Helm (YAML 1.1)
    /// read as `true`.
    // Manifests with `on` are refused by the CRD and by `parse_pipeline` (crate::renamed);
    // the alias only lets the operator read an object stored with `on` before the rename.
    #[serde(alias = "on")]
    pub trigger: ActionTrigger,
    /// Publish a JSON message to the local broker.
    pub mqtt: MqttAction,
    /// `trigger: anomaly` only: an episode ends once the device's score is at or below
    /// this (for `clearAfter` readings), so a score wavering around `inference.threshold`
    /// raises one alert, not one per crossing. At most `inference.threshold`, which is
    /// also the default (no hysteresis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_below: Option<f64>,
    /// `trigger: threshold` only: an episode ends once the value is back inside every
    /// threshold processor's limits by at least this margin, in the value's unit (for
    /// `above: 100` and `hysteresis: 5`, at or below 95). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hysteresis: Option<f64>,
    /// Readings in a row that must meet the clearing condition before an episode ends.
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_after: Option<u32>,
    /// After an episode starts, no new episode of this action starts for the same device
    /// within this time, e.g. `5m`: at most one alert per device per cooldown. A device
    /// still (or again) in alarm when the cooldown is over alerts on its next reading.
    /// Default 0 (none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
    /// Also publish a message with `"state":"resolved"` when an episode ends, on the
    /// action's topic unless `topic` is set. With `retain: true` on the action's topic
    /// the broker then keeps each device's current state. Not for `trigger:
    /// classification`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<ResolvedMessage>,
}

/// The message published when an episode ends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResolvedMessage {
    /// Topic template, like the action's (`{device}`, `{pipeline}`, `{node}`); default:
    /// the action's topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// Events that trigger local actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ActionTrigger {
    /// An anomaly detected by inference.
    Anomaly,
    /// A reading that passed a threshold processor.
    Threshold,
    /// An image classified by inference.
    Classification,
}

/// An MQTT publish on the source broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.qos == 0 || self.qos == 1", "message": "qos must be 0 or 1"}
]))]
pub struct MqttAction {
    /// Topic template; `{device}` and `{pipeline}` are replaced, e.g. `alerts/{device}`.
    pub topic: String,
    /// Publish QoS.
    #[serde(default)]
    pub qos: u8,
    /// Publish as a retained message.
    #[serde(default)]
    pub retain: bool,
}

/// The durable queue on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!quantity(self.maxBytes).isLessThan(quantity('64Ki'))", "message": "maxBytes must be at least 64Ki"},
    {"rule": "duration(self.maxAge) > duration('0s')", "message": "maxAge must be > 0"},
    {"rule": "!has(self.maxDeadLetterBytes) || quantity(self.maxDeadLetterBytes).isGreaterThan(quantity('0'))", "message": "maxDeadLetterBytes must be > 0", "fieldPath": ".maxDeadLetterBytes"},
    {"rule": "!has(self.maxDeadLetterBytes) || !quantity(self.maxDeadLetterBytes).add(quantity(self.maxDeadLetterBytes)).isGreaterThan(quantity(self.maxBytes))", "message": "maxDeadLetterBytes must be at most half of maxBytes", "fieldPath": ".maxDeadLetterBytes"}
]))]
pub struct Buffer {
    /// Upper bound on the queue's payload: queued records and dead letters together; what
    /// happens when it is reached is `whenFull`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: Size,
    /// Upper bound on the dead letters (batches the upstream rejected, kept for
    /// `edge-agent dead-letters replay`), within `maxBytes`: at most half of it; default a
    /// quarter. Over it the oldest dead letters are deleted, counted as
    /// `dead_letter_overflow` drops.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_dead_letter_bytes: Option<Size>,
    /// Records older than this are dropped (and counted) instead of sent.
    #[serde(default = "default_max_age")]
    pub max_age: Duration,
    /// What to do when the queue is full.
    #[serde(default)]
    pub when_full: WhenFull,
    /// How hard a commit is: `fsync` survives power loss, `os` survives a crash of the
    /// agent but not of the node.
    #[serde(default)]
    pub durability: Durability,
    /// Send what a deleted pipeline of the same name and namespace left queued on the node
    /// (deleted and created again, for example by a GitOps tool replacing it). By default
    /// that queue belongs to the deleted pipeline: the agent sets it aside on the node
    /// (`queue.db.pipeline-<uid>`), never sends it, and starts an empty queue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_previous_queue: bool,
    /// Encrypt what the queue stores on the node (record payloads, dead letters, saved
    /// processor state) with AES-256-GCM, so a stolen node or SD card gives away no
    /// reading. Sequence numbers, sizes, timestamps, device ids in the state's keys and
    /// the upstream's rejection reasons stay in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

/// Encryption at rest of the queue (`buffer.encryption`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.keys.all(k, self.keys.exists_one(x, x.id == k.id))", "message": "key ids must be unique", "fieldPath": ".keys"}
]))]
pub struct Encryption {
    /// The keys. The first encrypts what is stored from now on; the others only decrypt
    /// what they encrypted before. To rotate, put the new key first and keep the old one
    /// until the backlog it sealed is delivered (the agent logs when a key is no longer
    /// needed). A key is 32 bytes: raw, 64 hexadecimal digits or base64 (for example
    /// `openssl rand -hex 32`).
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["id"]))]
    pub keys: Vec<EncryptionKey>,
}

/// One key of `buffer.encryption.keys`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EncryptionKey {
    /// The key's name, stored with everything it encrypts (1 to 63 characters of letters,
    /// digits, `.`, `_` and `-`). Never reuse an id for different key material.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._-]{1,63}$"), length(min = 1, max = 63))]
    pub id: String,
    /// Where the key comes from (a Secret, an environment variable or a file).
    pub key_from: ValueFrom,
}

impl Default for Buffer {
    fn default() -> Self {
        Self {
            max_bytes: default_max_bytes(),
            max_dead_letter_bytes: None,
            max_age: default_max_age(),
            when_full: WhenFull::default(),
            durability: Durability::default(),
            adopt_previous_queue: false,
            encryption: None,
        }
    }
}

fn default_max_bytes() -> Size {
    Size::new("256Mi")
}
fn default_max_age() -> Duration {
    Duration::new("168h")
}

/// Policy when the queue is full. Every dropped record is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum WhenFull {
    /// Delete the oldest records to make room.
    #[default]
    DropOldest,
    /// Drop the incoming records.
    DropNewest,
    /// Stop acknowledging MQTT so the broker's persistent session holds the data.
    Block,
}

/// Commit durability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Durability {
    /// fsync on every commit (SQLite `synchronous=FULL`): survives power loss.
    #[default]
    Fsync,
    /// Leave flushing to the OS (SQLite `synchronous=NORMAL`): survives an agent crash.
    Os,
}

/// Where records go. Exactly one of `http` or `mqtt` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.http) != has(self.mqtt)", "message": "exactly one of http or mqtt must be set"}
]))]
pub struct Sink {
    /// POST JSON batches to an HTTP ingest API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSink>,
    /// Publish batches to an upstream MQTT broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttSink>,
    /// A cap on what the sink sends (request bodies or MQTT payloads, as they go out, after
    /// compression), for metered and thin links: a backlog drains at this rate instead of
    /// saturating the link for everyone else on the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// How a backlog drains once the upstream is back. Urgent records (anomalies,
    /// classifications, readings that crossed a `threshold`) always go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backlog: Option<BacklogDrain>,
    /// How each batch is written: `v1` (default), a JSON array of records, each with its
    /// pipeline, node, device, topic and kind; or `v2`, one object per batch that names
    /// pipeline and node once and groups the records of each device, topic and kind into
    /// columns (about a quarter of v1's bytes for readings); or `v3`, v2's groups and
    /// columns in binary with numbers as varint differences, for metered links. Specified
    /// in `deploy/wire-format.md`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<WireFormat>,
}

/// The wire format of a batch (`sink.format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WireFormat {
    /// A JSON array of records.
    #[default]
    #[serde(rename = "v1")]
    V1,
    /// One columnar object per batch (`"format": "edgepipe.v2"`).
    #[serde(rename = "v2")]
    V2,
    /// v2's groups and columns in binary (`EPv3`): numbers as varint differences, for
    /// metered links.
    #[serde(rename = "v3")]
    V3,
}

impl WireFormat {
    /// `v1`, `v2` or `v3`, as in YAML and in the `Edgepipe-Format` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }
}

/// How a backlog drains (`sink.backlog`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BacklogDrain {
    /// `liveFirst` (default): records queued after the upstream last failed go ahead of
    /// those that waited through the outage, which drain oldest first in the background.
    /// `oldestFirst`: every routine record in `seq` order.
    #[serde(default)]
    pub order: BacklogOrder,
    /// With `liveFirst`, the percent of the bytes sent that the backlog gets while live
    /// batches are also ready (default 20). With 0 the backlog goes only when no live
    /// batch is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub share_percent: Option<u8>,
}

impl BacklogDrain {
    /// The backlog's share when none is set.
    pub const DEFAULT_SHARE_PERCENT: u8 = 20;
}

/// Which routine records go first while a backlog drains (`sink.backlog.order`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BacklogOrder {
    /// Live records first, the backlog with its share.
    #[default]
    LiveFirst,
    /// Everything in `seq` order.
    OldestFirst,
}

/// A token bucket on the bytes a sink sends (`sink.rateLimit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "quantity(self.bytesPerSecond).isGreaterThan(quantity('0'))", "message": "bytesPerSecond must be > 0", "fieldPath": ".bytesPerSecond"},
    {"rule": "!has(self.burst) || quantity(self.burst).isGreaterThan(quantity('0'))", "message": "burst must be > 0", "fieldPath": ".burst"}
]))]
pub struct RateLimit {
    /// Bytes per second on average, e.g. `16Ki` (a quantity: `Ki`, `Mi`, ... or a number).
    pub bytes_per_second: Size,
    /// Bytes that may go out at once after a quiet time (default: one second's worth). A
    /// batch larger than the burst still goes, once the bucket is full, and the time it
    /// takes is paid for after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<Size>,
    /// Other caps by time of day, in UTC, for metered plans: the first window that holds
    /// the current time applies; outside every window, `bytesPerSecond` does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 24))]
    pub schedule: Vec<RateWindow>,
}

/// A cap for part of the day (`sink.rateLimit.schedule[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.from != self.to", "message": "to must differ from from (a window cannot be empty or the whole day)", "fieldPath": ".to"}
]))]
pub struct RateWindow {
    /// Start of the window, `HH:MM` in UTC.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"), length(max = 5))]
    pub from: String,
    /// End of the window, `HH:MM` in UTC, not included; earlier than `from` for a window
    /// that runs past midnight (`22:00` to `06:00`).
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"), length(max = 5))]
    pub to: String,
    /// The cap in this window; `0` sends nothing until it ends.
    pub bytes_per_second: Size,
}

impl RateWindow {
    /// `from` and `to` as minutes since midnight, if both are `HH:MM`.
    pub fn minutes(&self) -> Option<(u16, u16)> {
        Some((minute_of_day(&self.from)?, minute_of_day(&self.to)?))
    }
}

/// `HH:MM` (00:00 to 23:59) as minutes since midnight.
pub fn minute_of_day(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// An HTTP ingest API. Each request is a JSON array of records with an `Idempotency-Key`
/// header that is the same on every retry of the same batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.batchSize > 0", "message": "batchSize must be > 0"},
    {"rule": "duration(self.flushInterval) > duration('0s')", "message": "flushInterval must be > 0"},
    {"rule": "duration(self.timeout) > duration('0s')", "message": "timeout must be > 0"},
    {"rule": "!has(self.tls) || self.url.startsWith('https://')", "message": "tls is only used with an https:// url", "fieldPath": ".tls"},
    {"rule": "!has(self.deadLetterOn) || self.deadLetterOn.all(c, c >= 400 && c <= 499 && c != 401 && c != 403 && c != 407 && c != 408 && c != 429)", "message": "deadLetterOn takes 4xx codes other than 401, 403, 407, 408 and 429", "fieldPath": ".deadLetterOn"}
]))]
pub struct HttpSink {
    /// Endpoint URL (`https://` recommended); `${VAR}` is expanded from the environment.
    #[schemars(regex(pattern = r"^https?://.+"))]
    pub url: String,
    /// Maximum records per request.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Send a partial batch after this long.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: Duration,
    /// Request timeout; a timeout is retried.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Request body compression.
    #[serde(default)]
    pub compression: Compression,
    /// Extra request headers, e.g. an `Authorization` token from a Secret.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub headers: Vec<Header>,
    /// TLS settings (custom CA, client certificate) for an `https://` URL (an error with
    /// `http://`, which would ignore them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    /// Retry backoff bounds.
    #[serde(default)]
    pub retry: Retry,
    /// Response statuses that reject a batch's content: the batch moves to the dead
    /// letters and sync goes on. Every other 4xx (401, 403 and 404 included: an expired
    /// token or a moved endpoint) pauses delivery and retries the same batch with backoff,
    /// so a credential problem never empties the queue into dead letters. 4xx codes only,
    /// never 401, 403, 407, 408 or 429.
    #[serde(default = "default_dead_letter_on")]
    #[schemars(length(max = 32))]
    pub dead_letter_on: Vec<u16>,
}

fn default_dead_letter_on() -> Vec<u16> {
    vec![400, 413, 415, 422]
}

/// Statuses that are never a content rejection (credentials, timeouts, rate limits).
pub const NEVER_DEAD_LETTER: [u16; 5] = [401, 403, 407, 408, 429];

fn default_batch_size() -> u32 {
    500
}
fn default_flush_interval() -> Duration {
    Duration::new("5s")
}
fn default_timeout() -> Duration {
    Duration::new("10s")
}

/// Request body compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Compression {
    /// Plain JSON.
    #[default]
    None,
    /// gzip (`Content-Encoding: gzip`).
    Gzip,
    /// Zstandard at level 3 (`Content-Encoding: zstd`): smaller than gzip and faster.
    Zstd,
}

/// An HTTP header whose value comes from a Secret, an environment variable or a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    /// Header name, e.g. `Authorization`.
    pub name: String,
    /// Where the header value comes from.
    pub value_from: ValueFrom,
}

/// Capped exponential backoff with jitter for 5xx, 429, timeouts and connection errors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.initialBackoff) || duration(self.initialBackoff) > duration('0s')", "message": "initialBackoff must be > 0", "fieldPath": ".initialBackoff"},
    {"rule": "!has(self.maxBackoff) || duration(self.maxBackoff) > duration('0s')", "message": "maxBackoff must be > 0", "fieldPath": ".maxBackoff"}
]))]
pub struct Retry {
    /// First delay after a failure.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Duration,
    /// Largest delay between attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

fn default_initial_backoff() -> Duration {
    Duration::new("500ms")
}
fn default_max_backoff() -> Duration {
    Duration::new("60s")
}

/// An upstream MQTT broker. Each message is a JSON array of up to `batchSize` records;
/// records are deleted from the queue after the broker's PUBACK.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.qos == 0 || self.qos == 1", "message": "qos must be 0 or 1"},
    {"rule": "self.batchSize > 0", "message": "batchSize must be > 0"},
    {"rule": "!has(self.tls) || self.url.startsWith('mqtts://')", "message": "tls is only used with an mqtts:// url", "fieldPath": ".tls"},
    {"rule": "duration(self.flushInterval) > duration('0s')", "message": "flushInterval must be > 0"}
]))]
pub struct MqttSink {
    /// Broker URL, `mqtt://` or `mqtts://`; `${VAR}` is expanded from the environment.
    #[schemars(regex(pattern = r"^mqtts?://.+"))]
    pub url: String,
    /// Topic template; `{pipeline}` and `{node}` are replaced.
    pub topic: String,
    /// Publish QoS; 1 means a batch leaves the queue only after the broker's PUBACK.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Maximum records per message.
    #[serde(default = "default_mqtt_batch_size")]
    pub batch_size: u32,
    /// Send a partial batch after this long.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: Duration,
    /// MQTT client id; defaults to `<namespace>-<name>-<node>-sink`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// MQTT username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Where the MQTT password comes from; never inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_from: Option<ValueFrom>,
    /// TLS settings for `mqtts://` (an error with `mqtt://`, which would ignore them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

fn default_mqtt_batch_size() -> u32 {
    100
}

/// How the agent pods run (cluster only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.metricsPort >= 1 && self.metricsPort <= 65535", "message": "metricsPort must be a port number"},
    {"rule": "!has(self.maxUnavailable) || (self.maxUnavailable == string(self.maxUnavailable) ? self.maxUnavailable.matches('^([1-9][0-9]?|100)%$') : int(self.maxUnavailable) >= 1)",
     "message": "maxUnavailable must be at least 1, or a percentage from 1% to 100%"}
]))]
pub struct AgentSettings {
    /// CPU and memory requests and limits of the agent container. Defaults to requests of
    /// 20m CPU / 32Mi memory and a 256Mi memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Port serving `/metrics`, `/livez` and `/readyz`.
    #[serde(default = "default_metrics_port")]
    pub metrics_port: i32,
    /// How many nodes may have their agent down during a rollout (a number or a
    /// percentage); `rollout.maxUnavailable` wins when both are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Log filter of the agent, e.g. `info` or `edge_agent=debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// Log lines as `text` (the default) or `json` (one object per line with `timestamp`,
    /// `level`, `target`, `message` and the event's fields, for Loki or Fluent Bit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (colors only on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("log format {other:?}: use text or json")),
        }
    }
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            resources: None,
            metrics_port: default_metrics_port(),
            max_unavailable: None,
            log_level: None,
            log_format: None,
        }
    }
}

fn default_metrics_port() -> i32 {
    9464
}

/// How a change of the pipeline is rolled out (cluster only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.maxUnavailable) || (self.maxUnavailable == string(self.maxUnavailable) ? self.maxUnavailable.matches('^([1-9][0-9]?|100)%$') : int(self.maxUnavailable) >= 1)",
     "message": "maxUnavailable must be at least 1, or a percentage from 1% to 100%"},
    {"rule": "!has(self.progressDeadline) || duration(self.progressDeadline) > duration('0s')", "message": "progressDeadline must be > 0", "fieldPath": ".progressDeadline"}
]))]
pub struct RolloutSettings {
    /// How long a rollout may go without progress (one more node updated or ready) before
    /// the pipeline gets the `Stalled` condition, reason `ProgressDeadlineExceeded`; also
    /// how long a new agent may take to become ready before the rollout pauses itself
    /// (reason `RolloutFailed`). Offline nodes never count against it.
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: Duration,
    /// How many nodes may have their agent down at once during a rollout: a number (at
    /// least 1) or a percentage of the pipeline's nodes (`25%`, rounded up). Default:
    /// `agent.maxUnavailable`, else 1. Agents are never surged: two agents must not share
    /// a node's queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Hold every node on the revision it runs: no agent is replaced while this is true
    /// (a node that joins still gets the current revision). Setting it to false resumes a
    /// rollout, also one that paused itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Try a new revision on a few nodes first: the others follow only once the canary
    /// agents are ready and healthy for `soak`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySettings>,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        Self {
            progress_deadline: default_progress_deadline(),
            max_unavailable: None,
            paused: None,
            canary: None,
        }
    }
}

/// The nodes that take a new revision first, and how long they must stay healthy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.nodeSelector) && size(self.nodeSelector) > 0) != has(self.count)", "message": "set exactly one of nodeSelector and count"}
]))]
pub struct CanarySettings {
    /// The canary nodes: the pipeline's nodes with all of these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Or this many canary nodes: the first of the pipeline's online nodes by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<i32>,
    /// How long every canary agent must stay ready, without a restart and with its
    /// upstream failing no more than the other nodes', before the other nodes follow.
    #[serde(default = "default_soak")]
    pub soak: Duration,
}

fn default_soak() -> Duration {
    Duration::new("5m")
}

fn default_progress_deadline() -> Duration {
    Duration::new("10m")
}

impl EdgePipelineSpec {
    /// `spec.rollout.maxUnavailable`, else `spec.agent.maxUnavailable`, else 1.
    pub fn max_unavailable(&self) -> IntOrString {
        self.rollout
            .as_ref()
            .and_then(|r| r.max_unavailable.clone())
            .or_else(|| self.agent.max_unavailable.clone())
            .unwrap_or(IntOrString::Int(1))
    }

    /// `spec.rollout.paused`.
    pub fn rollout_paused(&self) -> bool {
        self.rollout
            .as_ref()
            .and_then(|r| r.paused)
            .unwrap_or(false)
    }

    /// `spec.rollout.progressDeadline`, or its default (10 minutes) when absent or
    /// unparsable (validation reports the latter).
    pub fn progress_deadline(&self) -> std::time::Duration {
        self.rollout
            .as_ref()
            .and_then(|r| r.progress_deadline.to_std().ok())
            .unwrap_or(std::time::Duration::from_secs(600))
    }
}

/// A borrowed view of a [`Processor`] as the closed set of stage kinds it can be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ProcessorKind<'a> {
    /// See [`SignificantChange`].
    SignificantChange(&'a SignificantChange),
    /// See [`Deadband`].
    Deadband(&'a Deadband),
    /// See [`Range`].
    Range(&'a Range),
    /// See [`Threshold`].
    Threshold(&'a Threshold),
    /// See [`Aggregate`].
    Aggregate(&'a Aggregate),
}

impl Processor {
    /// The stage this processor is, or `None` unless exactly one field is set.
    pub fn kind(&self) -> Option<ProcessorKind<'_>> {
        let mut stages = self.stages();
        match (stages.next(), stages.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }

    /// Every stage field that is set (one in a valid processor).
    pub fn stages(&self) -> impl Iterator<Item = ProcessorKind<'_>> {
        [
            self.significant_change
                .as_ref()
                .map(ProcessorKind::SignificantChange),
            self.deadband.as_ref().map(ProcessorKind::Deadband),
            self.range.as_ref().map(ProcessorKind::Range),
            self.threshold.as_ref().map(ProcessorKind::Threshold),
            self.aggregate.as_ref().map(ProcessorKind::Aggregate),
        ]
        .into_iter()
        .flatten()
    }
}

impl ProcessorKind<'_> {
    /// The processor's name as used in metric labels (static, bounded).
    pub fn metric_name(&self) -> &'static str {
        match self {
            Self::SignificantChange(_) => "significant_change",
            Self::Deadband(_) => "deadband",
            Self::Range(_) => "range",
            Self::Threshold(_) => "threshold",
            Self::Aggregate(_) => "aggregate",
        }
    }
}
