//! CSR signing throughput of the CA with an RSA-4096 and with an ECDSA P-256 intermediate, next to
//! the bare signature operation with the same key. `scripts/bench-ca` runs this pinned to one core
//! and prints it beside `openssl speed`.

use std::hint::black_box;
use std::time::Duration;

use causeway_ca::certs_dir;
use causeway_ca::issue::{IntermediateCaProfile, KeyType, RootCaProfile};
use causeway_ca::{CertificateAuthority, SigningPolicy, SpiffeId, WorkloadKey};
use criterion::{Criterion, criterion_group, criterion_main};
use rcgen::SigningKey;

fn authority(dir: &std::path::Path, key_type: KeyType) -> CertificateAuthority {
    let root = RootCaProfile {
        key_type,
        ..RootCaProfile::default()
    };
    certs_dir::create_root(dir, &root, false).expect("root");
    let mut intermediate = IntermediateCaProfile::for_cluster("bench");
    intermediate.key_type = key_type;
    certs_dir::create_intermediate(dir, dir, &intermediate, false).expect("intermediate");
    CertificateAuthority::from_cacerts_dir(&dir.join("bench"), SigningPolicy::default())
        .expect("bundle")
}

fn signing(c: &mut Criterion) {
    let identity = SpiffeId::new("cluster.local", "sample", "helloworld").unwrap();
    let workload = WorkloadKey::generate().unwrap();
    let csr = workload.csr_pem(&identity).unwrap();
    // A to-be-signed body of a typical workload certificate's size.
    let tbs = vec![0x5au8; 420];

    let mut group = c.benchmark_group("ca");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (label, key_type) in [
        ("rsa4096", KeyType::Rsa { bits: 4096 }),
        ("ecdsa_p256", KeyType::EcdsaP256),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ca = authority(dir.path(), key_type);
        group.bench_function(format!("sign_csr/{label}"), |b| {
            b.iter(|| {
                ca.sign_csr(black_box(csr.as_bytes()), &identity, None)
                    .unwrap()
            })
        });
        let key = ca.bundle().signer().key();
        group.bench_function(format!("raw_signature/{label}"), |b| {
            b.iter(|| key.sign(black_box(&tbs)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, signing);
criterion_main!(benches);
