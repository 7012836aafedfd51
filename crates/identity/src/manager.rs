//! Certificates of the identities a proxy serves: issued on demand, cached, rotated in time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::ca::{CertificateAuthority, DEFAULT_CERT_VALIDITY};
use crate::client::CertificateClient;
use crate::tls::WorkloadCertificate;
use crate::{IdentityError, SpiffeId};

/// First retry delay after a failed rotation; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between rotation attempts while the CA fails.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Where certificates come from: the CA over gRPC, or one in this process.
#[derive(Debug)]
enum Signer {
    Remote(Box<CertificateClient>),
    Local(Arc<CertificateAuthority>),
}

/// The workload certificates of one proxy, per identity. `get` issues a certificate on first
/// use (one request at a time per identity, however many callers wait) and a background task
/// renews it when half its lifetime has passed, so `get` returns a valid certificate without
/// waiting on the CA in the steady state. Cheap to clone; background tasks stop when the last
/// clone is dropped or the identity is forgotten.
#[derive(Clone, Debug)]
pub struct Certificates {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    signer: Signer,
    /// Requested certificate lifetime in seconds.
    validity_secs: AtomicU64,
    slots: Mutex<HashMap<SpiffeId, Arc<Slot>>>,
}

/// One identity's certificate and its rotation.
#[derive(Debug)]
struct Slot {
    id: SpiffeId,
    current: Mutex<Option<Arc<WorkloadCertificate>>>,
    /// Held while a certificate is being requested: the single flight per identity.
    issuing: tokio::sync::Mutex<()>,
    rotation: Mutex<Option<AbortHandle>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let rotation = self
            .rotation
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = rotation.take() {
            task.abort();
        }
    }
}

impl Slot {
    /// The current certificate if it is still valid.
    fn valid(&self) -> Option<Arc<WorkloadCertificate>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|cert| !cert.remaining().is_zero())
            .cloned()
    }

    fn refresh_at(&self) -> Option<Instant> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|cert| Instant::from_std(cert.refresh_at()))
    }

    fn store(&self, cert: Arc<WorkloadCertificate>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(cert);
    }
}

impl Certificates {
    /// Certificates signed by the CA behind `client`.
    pub fn new(client: CertificateClient) -> Certificates {
        Certificates::with_signer(Signer::Remote(Box::new(client)))
    }

    /// Certificates signed by a CA in this process (standalone mode, tests). Same key
    /// generation, CSR and checks as [`Self::new`], without the network hop.
    pub fn from_ca(ca: Arc<CertificateAuthority>) -> Certificates {
        Certificates::with_signer(Signer::Local(ca))
    }

    fn with_signer(signer: Signer) -> Certificates {
        Certificates {
            inner: Arc::new(Inner {
                signer,
                validity_secs: AtomicU64::new(DEFAULT_CERT_VALIDITY.as_secs()),
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Sets the lifetime requested for new certificates (the CA may shorten it; whole seconds,
    /// zero asks for the CA's default). Applies to certificates issued from now on.
    pub fn with_validity(self, validity: Duration) -> Certificates {
        self.inner
            .validity_secs
            .store(validity.as_secs(), Ordering::Relaxed);
        self
    }

    /// A valid certificate for `id`: the cached one, or a new one from the CA. Concurrent calls
    /// for the same identity share one request. The first call for an identity starts its
    /// background rotation on the current Tokio runtime.
    pub async fn get(&self, id: &SpiffeId) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        let slot = self.slot(id);
        if let Some(cert) = slot.valid() {
            return Ok(cert);
        }
        let _issuing = slot.issuing.lock().await;
        if let Some(cert) = slot.valid() {
            return Ok(cert);
        }
        let cert = match self.inner.issue(id).await {
            Ok(cert) => Arc::new(cert),
            Err(error) => {
                self.drop_if_empty(&slot);
                return Err(error);
            }
        };
        slot.store(cert.clone());
        self.ensure_rotation(&slot);
        Ok(cert)
    }

    /// The cached certificate for `id`, if one is held and still valid; never contacts the CA.
    pub fn cached(&self, id: &SpiffeId) -> Option<Arc<WorkloadCertificate>> {
        let slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slots.get(id).and_then(|slot| slot.valid())
    }

    /// Drops the certificate of `id` and stops rotating it (its last pod left this node).
    /// Certificates already handed out stay usable until they expire.
    pub fn forget(&self, id: &SpiffeId) {
        let removed = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        if removed.is_some() {
            tracing::debug!(identity = %id, "forgot workload certificate");
        }
    }

    /// The identities currently held.
    pub fn identities(&self) -> Vec<SpiffeId> {
        let slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut ids: Vec<SpiffeId> = slots.keys().cloned().collect();
        ids.sort();
        ids
    }

    fn slot(&self, id: &SpiffeId) -> Arc<Slot> {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slots
            .entry(id.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    id: id.clone(),
                    current: Mutex::new(None),
                    issuing: tokio::sync::Mutex::new(()),
                    rotation: Mutex::new(None),
                })
            })
            .clone()
    }

    /// Removes a slot that never obtained a certificate, so failed identities are not listed.
    fn drop_if_empty(&self, slot: &Arc<Slot>) {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let empty = slot
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none();
        if empty && slots.get(&slot.id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(&slot.id);
        }
    }

    fn ensure_rotation(&self, slot: &Arc<Slot>) {
        let mut rotation = slot.rotation.lock().unwrap_or_else(PoisonError::into_inner);
        if rotation.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Without a runtime there is nothing to run rotation on; `get` still replaces the
            // certificate once it has expired.
            tracing::warn!(identity = %slot.id, "no Tokio runtime: certificate will not be rotated in the background");
            return;
        };
        let task = runtime.spawn(rotate(Arc::downgrade(&self.inner), Arc::downgrade(slot)));
        *rotation = Some(task.abort_handle());
    }
}

/// Renews a slot's certificate at its refresh time, retrying with backoff while the CA fails.
/// Holds only weak references between attempts, and is aborted when the slot is dropped.
async fn rotate(inner: Weak<Inner>, slot: Weak<Slot>) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(refresh_at) = slot.upgrade().and_then(|slot| slot.refresh_at()) else {
            return;
        };
        tokio::time::sleep_until(refresh_at).await;
        let (Some(inner), Some(slot)) = (inner.upgrade(), slot.upgrade()) else {
            return;
        };
        let result = {
            let _issuing = slot.issuing.lock().await;
            // `get` may have replaced an expired certificate meanwhile.
            if slot.refresh_at().is_some_and(|at| at > Instant::now()) {
                continue;
            }
            inner.issue(&slot.id).await.map(|cert| {
                slot.store(Arc::new(cert));
            })
        };
        match result {
            Ok(()) => {
                tracing::info!(identity = %slot.id, "rotated workload certificate");
                retry = FIRST_RETRY;
            }
            Err(error) => {
                let remaining = slot.valid().map(|c| c.remaining()).unwrap_or_default();
                tracing::warn!(
                    identity = %slot.id, %error, ?remaining, ?retry,
                    "workload certificate rotation failed, retrying"
                );
                drop((inner, slot));
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

impl Inner {
    /// Generates a key, sends a CSR for `id` and assembles the result.
    async fn issue(&self, id: &SpiffeId) -> Result<WorkloadCertificate, IdentityError> {
        let key_error = |source| IdentityError::Key {
            id: id.clone(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(key_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names =
            vec![SanType::URI(id.to_string().try_into().map_err(key_error)?)];
        let csr_pem = params
            .serialize_request(&key)
            .and_then(|csr| csr.pem())
            .map_err(key_error)?;
        let validity = Duration::from_secs(self.validity_secs.load(Ordering::Relaxed));
        let (chain, root) = match &self.signer {
            Signer::Remote(client) => {
                let response = client.create_certificate(csr_pem, validity).await?;
                (response.cert_chain_pem, response.root_pem)
            }
            Signer::Local(ca) => (
                ca.sign_csr(&csr_pem, id, validity)
                    .map_err(|source| IdentityError::Ca {
                        id: id.clone(),
                        source: Box::new(source),
                    })?,
                ca.root_pem().to_owned(),
            ),
        };
        let cert = WorkloadCertificate::from_pem(id.clone(), &chain, &root, key.serialize_der())?;
        tracing::debug!(identity = %id, not_after = ?cert.not_after(), "obtained workload certificate");
        Ok(cert)
    }
}
