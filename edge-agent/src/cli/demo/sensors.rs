//! Simulated vibration sensors for the demo: each one publishes `{"rms": <value>}` on
//! `sensors/<device>/vibration` at a fixed rate over MQTT.
//!
//! A sensor's signal is what the demo's autoencoder was trained to call normal (a steady
//! oscillation around 20 with noise, offset by a slow drift that stays within the training
//! range), plus a spike (+21, six standard deviations) injected every 8 to 20 seconds at a
//! jittered, per-sensor time, the first one within the first 5.5 seconds.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Mean of the signal (the model's normalisation mean).
const BASE: f64 = 20.0;
/// Height of an injected spike.
const SPIKE: f64 = 21.0;
/// Standard deviation of the measurement noise.
const NOISE: f64 = 0.2;
/// Largest drift away from [`BASE`].
const DRIFT: f64 = 0.4;
/// Period of the drift.
const DRIFT_PERIOD: Duration = Duration::from_secs(120);
/// Seconds before a sensor's first spike: this plus 0.5 s x (sensor index mod 6).
const FIRST_SPIKE_S: f64 = 2.5;
/// Seconds between spikes of one sensor: uniformly in this range.
const SPIKE_GAP_S: (f64, f64) = (8.0, 20.0);
/// Publishes waiting for the MQTT event loop.
const REQUEST_CAPACITY: usize = 1000;

/// One reading of a simulated sensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// The value published.
    pub value: f64,
    /// Whether a spike was injected into it.
    pub spike: bool,
}

/// One simulated sensor: a deterministic signal for a given index and seed.
pub struct Sensor {
    /// Device id (`s1`, `s2`, ...), the topic's second segment.
    pub device: String,
    rng: StdRng,
    /// Readings per second.
    rate: f64,
    amplitude: f64,
    /// Cycles per reading.
    frequency: f64,
    phase: f64,
    /// Readings taken.
    t: u64,
    next_spike: u64,
}

impl Sensor {
    /// Sensor number `index` (from 0) sampling `rate` times a second.
    pub fn new(index: u32, rate: f64, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed ^ u64::from(index).wrapping_mul(0x9E37_79B9));
        let first = FIRST_SPIKE_S + f64::from(index % 6) * 0.5;
        Self {
            device: format!("s{}", index + 1),
            amplitude: rng.random_range(4.0..5.0),
            // One cycle every 16 to 32 readings: the oscillation the model knows.
            frequency: rng.random_range(1.0 / 32.0..1.0 / 16.0),
            phase: rng.random_range(0.0..std::f64::consts::TAU),
            next_spike: (first * rate).round() as u64,
            rate,
            rng,
            t: 0,
        }
    }

    /// The topic the sensor publishes on.
    pub fn topic(&self) -> String {
        format!("sensors/{}/vibration", self.device)
    }

    /// The next reading.
    pub fn next_sample(&mut self) -> Sample {
        let t = self.t as f64;
        let drift_cycles = t / (self.rate * DRIFT_PERIOD.as_secs_f64());
        let drift = DRIFT * (std::f64::consts::TAU * drift_cycles).sin();
        let wave = self.amplitude * (std::f64::consts::TAU * self.frequency * t + self.phase).sin();
        let noise = NOISE * gaussian(&mut self.rng);
        let spike = self.t == self.next_spike;
        if spike {
            let gap = self.rng.random_range(SPIKE_GAP_S.0..SPIKE_GAP_S.1);
            self.next_spike = self.t + ((gap * self.rate).round() as u64).max(1);
        }
        self.t += 1;
        let value = BASE + drift + wave + noise + if spike { SPIKE } else { 0.0 };
        Sample {
            value: (value * 1000.0).round() / 1000.0,
            spike,
        }
    }
}

/// A standard normal draw (Box-Muller).
fn gaussian(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// What the simulator has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Readings handed to the MQTT client.
    pub readings: u64,
    /// Readings with an injected spike.
    pub spikes: u64,
    /// Readings the broker acknowledged (PUBACK).
    pub acked: u64,
}

/// The running simulator.
pub struct Simulator {
    client: AsyncClient,
    ticker: JoinHandle<()>,
    events: JoinHandle<()>,
    progress: watch::Receiver<Published>,
}

impl Simulator {
    /// Connects to the broker at `port` on loopback and starts `sensors` sensors, each
    /// publishing `rate` readings a second (QoS 1).
    pub fn start(port: u16, sensors: u32, rate: f64, seed: u64) -> Self {
        let mut options = MqttOptions::new("edgepipe-demo-sensors", "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_inflight(1000);
        let (client, mut events) = AsyncClient::new(options, REQUEST_CAPACITY);
        let (tx, progress) = watch::channel(Published::default());
        let acks = tx.clone();
        let events = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        acks.send_modify(|p| p.acked += 1);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "demo sensors: broker connection");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let mut fleet: Vec<Sensor> = (0..sensors).map(|i| Sensor::new(i, rate, seed)).collect();
        let publisher = client.clone();
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                for sensor in &mut fleet {
                    let sample = sensor.next_sample();
                    let payload = format!(r#"{{"rms":{}}}"#, sample.value);
                    if publisher
                        .publish(sensor.topic(), QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tx.send_modify(|p| {
                        p.readings += 1;
                        p.spikes += u64::from(sample.spike);
                    });
                }
            }
        });
        Self {
            client,
            ticker,
            events,
            progress,
        }
    }

    /// Counts so far.
    pub fn published(&self) -> Published {
        *self.progress.borrow()
    }

    /// Stops publishing and waits (up to `timeout`) for the broker to acknowledge what
    /// was published; returns the final counts.
    pub async fn stop(mut self, timeout: Duration) -> Published {
        self.ticker.abort();
        let _ = (&mut self.ticker).await;
        let _ =
            tokio::time::timeout(timeout, self.progress.wait_for(|p| p.acked >= p.readings)).await;
        let _ = self.client.try_disconnect();
        self.events.abort();
        *self.progress.borrow()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.ticker.abort();
        self.events.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_stay_in_the_normal_band_between_spikes() {
        let mut s = Sensor::new(0, 10.0, 7);
        let samples: Vec<Sample> = (0..600).map(|_| s.next_sample()).collect();
        for x in samples.iter().filter(|x| !x.spike) {
            assert!((13.0..27.0).contains(&x.value), "{x:?}");
        }
        for x in samples.iter().filter(|x| x.spike) {
            assert!(x.value > 30.0, "{x:?}");
        }
        let mean = samples
            .iter()
            .filter(|x| !x.spike)
            .map(|x| x.value)
            .sum::<f64>()
            / samples.iter().filter(|x| !x.spike).count() as f64;
        assert!((mean - BASE).abs() < 1.0, "mean {mean}");
    }

    #[test]
    fn every_sensor_spikes_early_and_then_every_few_seconds() {
        for index in 0..8 {
            let rate = 10.0;
            let mut s = Sensor::new(index, rate, 1);
            let spikes: Vec<u64> = (0..600u64).filter(|_| s.next_sample().spike).collect();
            let first = spikes[0] as f64 / rate;
            assert!((2.0..=5.5).contains(&first), "first spike at {first}s");
            assert!(spikes.len() >= 3, "{spikes:?}");
            for gap in spikes.windows(2).map(|w| (w[1] - w[0]) as f64 / rate) {
                assert!((7.9..=20.1).contains(&gap), "gap {gap}s");
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_signal() {
        let a: Vec<Sample> = {
            let mut s = Sensor::new(3, 5.0, 42);
            (0..50).map(|_| s.next_sample()).collect()
        };
        let b: Vec<Sample> = {
            let mut s = Sensor::new(3, 5.0, 42);
            (0..50).map(|_| s.next_sample()).collect()
        };
        assert_eq!(a, b);
        assert_eq!(Sensor::new(3, 5.0, 42).topic(), "sensors/s4/vibration");
    }
}
