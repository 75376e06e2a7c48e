//! MQTT for tests: a real Mosquitto broker on a free loopback port (killed on drop), a
//! QoS 1 publisher whose `flush` waits for every PUBACK, a subscriber that collects what
//! arrives, and the preparation of a persistent session before an agent first connects.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, QoS};

use crate::{free_port, tool};

/// A Mosquitto broker started for one test; killed on drop.
pub struct Mosquitto {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    persistent: bool,
    /// `user:password` logins; none: anonymous access.
    users: Vec<(String, String)>,
    /// The address it listens on.
    host: &'static str,
    /// Configuration lines after the kit's own (a later line wins).
    extra: String,
}

impl Mosquitto {
    /// Starts `/usr/sbin/mosquitto` on a free loopback port, with room for large
    /// persistent-session backlogs.
    pub fn start() -> Self {
        Self::launch(None, false)
    }

    /// Starts the broker on `port` (which must be free).
    pub fn start_on(port: u16) -> Self {
        Self::launch(Some(port), false)
    }

    /// A broker on every interface of this host (on a free port), so containers and pods
    /// reach it at the host's address.
    pub fn start_for_containers() -> Self {
        Self::launch_on("0.0.0.0", None, false, &[], "")
    }

    /// A broker with `persistence true`: persistent sessions and their queued messages
    /// survive [`Mosquitto::restart`] on the same port.
    pub fn persistent() -> Self {
        Self::launch(None, true)
    }

    /// A broker that allows only these `(username, password)` logins (a Mosquitto
    /// password file), no anonymous clients.
    pub fn with_users(users: &[(&str, &str)]) -> Self {
        Self::launch_with(None, false, users)
    }

    /// A broker on a free loopback port with `extra` configuration lines after the
    /// kit's own (Mosquitto takes the last value of an option): the benchmarks' limits.
    pub fn with_config(extra: &str) -> Self {
        Self::launch_on("127.0.0.1", None, false, &[], extra)
    }

    fn launch(fixed: Option<u16>, persistent: bool) -> Self {
        Self::launch_with(fixed, persistent, &[])
    }

    fn launch_with(fixed: Option<u16>, persistent: bool, users: &[(&str, &str)]) -> Self {
        Self::launch_on("127.0.0.1", fixed, persistent, users, "")
    }

    fn launch_on(
        host: &'static str,
        fixed: Option<u16>,
        persistent: bool,
        users: &[(&str, &str)],
        extra: &str,
    ) -> Self {
        let mut broker = Self {
            host,
            extra: extra.to_string(),
            port: 0,
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            persistent,
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        };
        for _ in 0..5 {
            broker.port = fixed.unwrap_or_else(free_port);
            if broker.spawn() {
                return broker;
            }
        }
        panic!("mosquitto did not start:\n{}", broker.log_text());
    }

    /// Runs mosquitto on `self.port`; false when it exited first (the port was taken).
    fn spawn(&mut self) -> bool {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut text = format!(
            "listener {} {}\nallow_anonymous {}\nmax_inflight_messages 1000\n\
             max_queued_messages 0\nmax_keepalive 60\n",
            self.port,
            self.host,
            self.users.is_empty()
        );
        if !self.users.is_empty() {
            let file = self.dir.path().join("passwords");
            std::fs::write(&file, "").expect("password file");
            for (user, password) in &self.users {
                let status = Command::new(tool("mosquitto_passwd"))
                    .arg("-b")
                    .arg(&file)
                    .args([user, password])
                    .status()
                    .expect("mosquitto_passwd (tests/scripts/install-deps.sh installs it)");
                assert!(status.success(), "mosquitto_passwd failed");
            }
            // Mosquitto reads the file after dropping root; the temporary directory is
            // root's alone.
            if !self.persistent {
                text += "user root\n";
            }
            text += &format!("password_file {}\n", file.display());
        }
        if self.persistent {
            let data = self.dir.path().join("db");
            std::fs::create_dir_all(&data).expect("persistence dir");
            text += &format!(
                "user root\npersistence true\npersistence_location {}/\nautosave_interval 1\n",
                data.display()
            );
        } else {
            text += "persistence false\n";
        }
        text += &self.extra;
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("broker log");
        let mut child = Command::new(tool("mosquitto"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto (tests/scripts/install-deps.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                self.child = Some(child);
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Stops the broker with SIGTERM (a persistent one saves its sessions) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::process::terminate(&mut child, Duration::from_secs(10));
        }
    }

    /// Starts it again on the same port (and persistence directory).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not come back on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The arguments that point a Mosquitto command-line client (`mosquitto_pub`,
/// `mosquitto_sub`) at the loopback broker on `port`, with QoS `qos`.
pub fn cli_args(port: u16, qos: u8) -> [String; 6] {
    [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        &qos.to_string(),
    ]
    .map(String::from)
}

/// Opens the persistent session of `client_id` with `topics` subscribed (QoS 1), so the
/// broker keeps every matching message for the agent from now on, whether it is up or
/// not.
pub async fn prepare_session(port: u16, client_id: &str, topics: &[&str]) {
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut events) = AsyncClient::new(options, 10);
    for t in topics {
        client
            .subscribe(*t, QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
    }
    let mut acked = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while acked < topics.len() {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("preparing the session: {e}"),
            Err(_) => panic!("no SUBACK"),
        }
    }
    client.disconnect().await.expect("disconnect request");
    loop {
        match events.poll().await {
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// A QoS 1 publisher whose `publish` returns once the broker acknowledged the message.
pub struct Publisher {
    client: AsyncClient,
    acks: tokio::sync::mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
    outstanding: usize,
}

impl Publisher {
    pub fn connect(port: u16, client_id: &str) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        // Room for the oversized messages of the hostile-input tests.
        options.set_max_packet_size(1 << 20, 32 << 20);
        options.set_inflight(200);
        let (client, mut events) = AsyncClient::new(options, 100);
        let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("test publisher: {e}"),
                }
            }
        });
        Self {
            client,
            acks,
            task,
            outstanding: 0,
        }
    }

    /// Queues a QoS 1 publish.
    pub async fn send(&mut self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("publish request");
        self.outstanding += 1;
    }

    /// Waits until the broker acknowledged everything sent so far.
    pub async fn flush(&mut self) {
        while self.outstanding > 0 {
            tokio::time::timeout(Duration::from_secs(20), self.acks.recv())
                .await
                .expect("PUBACK in time")
                .expect("publisher alive");
            self.outstanding -= 1;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// (topic, payload) of a received message.
pub type Received = (String, Vec<u8>);

/// A subscriber collecting every message on a topic filter.
pub struct Subscriber {
    messages: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    /// Subscribes (QoS 1) and returns once the broker confirmed the subscription.
    pub async fn connect(port: u16, client_id: &str, filter: &str) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_max_packet_size(16 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 10);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe request");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, events.poll()).await {
                Ok(Ok(Event::Incoming(Incoming::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("subscriber: {e}"),
                Err(_) => panic!("no SUBACK"),
            }
        }
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = messages.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Incoming::Publish(p)) = event {
                    sink.lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec()));
                }
            }
        });
        Self { messages, task }
    }

    /// Every message so far.
    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}
