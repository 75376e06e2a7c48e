//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager), so two
//! operator replicas are safe: only the holder of the Lease runs the controller; the
//! others stand by and take over when the holder stops renewing it.
//!
//! The holder runs the controller until it loses the Lease or shutdown is requested; on
//! loss the controller stops (letting running reconciles finish) and the replica stands
//! by again. On shutdown the Lease is released so a standby takes over at once.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};
use tokio_util::sync::CancellationToken;

use crate::controller;

/// Seconds a Lease stays valid after its last renewal.
pub const LEASE_DURATION_SECONDS: u64 = 15;
/// Seconds before expiry at which the holder renews.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// Where the Lease lives and who this replica is.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace (the operator's own).
    pub namespace: String,
    /// This replica's identity (the pod name).
    pub identity: String,
}

/// Why leader election stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Lease could not be created or read.
    #[error("leader election on Lease {namespace}/{name} failed: {source}")]
    Lease {
        /// Lease namespace.
        namespace: String,
        /// Lease name.
        name: String,
        /// The cause.
        source: LeaseManagerError,
    },
    /// The task renewing the Lease ended.
    #[error("the Lease renewal task ended")]
    RenewalEnded,
    /// The controller failed while leading.
    #[error(transparent)]
    Controller(controller::Error),
}

/// Runs `lead` whenever this replica holds the Lease, until `shutdown` is cancelled.
/// `lead` receives a token cancelled when leadership is lost or shutdown is requested,
/// and must return once it is cancelled; if it fails, election stops with its error.
pub async fn run_as_leader<F, Fut>(
    client: Client,
    settings: LeaseSettings,
    shutdown: CancellationToken,
    mut lead: F,
) -> Result<(), Error>
where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), controller::Error>>,
{
    let lease_error = |source| Error::Lease {
        namespace: settings.namespace.clone(),
        name: settings.name.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_field_manager(format!("edge-operator-lease-{}", settings.identity))
        .with_duration(LEASE_DURATION_SECONDS)
        .with_grace(LEASE_GRACE_SECONDS)
        .build()
        .await
        .map_err(lease_error)?;
    let (mut leading, renewal) = manager.watch().await;
    tracing::info!(lease = %settings.name, identity = %settings.identity, "standing by for the Lease");

    let result = loop {
        let acquired = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            acquired = async { leading.wait_for(|is_leader| *is_leader).await.is_ok() } => acquired,
        };
        if !acquired {
            break Err(Error::RenewalEnded);
        }
        tracing::info!(identity = %settings.identity, "acquired the Lease; leading");
        let term = shutdown.child_token();
        let work = lead(term.clone());
        tokio::pin!(work);
        tokio::select! {
            ended = &mut work => break ended.map_err(Error::Controller),
            renewing = async { leading.wait_for(|is_leader| !*is_leader).await.is_ok() } => {
                term.cancel();
                let ended = work.as_mut().await;
                if let Err(error) = ended {
                    break Err(Error::Controller(error));
                }
                if !renewing {
                    break Err(Error::RenewalEnded);
                }
                tracing::warn!(identity = %settings.identity, "lost the Lease; standing by");
            }
        }
    };

    // Closing the channel makes the renewal task release the Lease and end.
    drop(leading);
    match renewal.await {
        Ok(Ok(_)) => tracing::info!("released the Lease"),
        Ok(Err(error)) => tracing::warn!(%error, "releasing the Lease failed"),
        Err(error) => tracing::warn!(%error, "the Lease renewal task failed"),
    }
    result
}
