//! The sweep's AWS clients, one set per Region, each counting the HTTP requests it sends.
//!
//! The count is what bounds the sweep and what its report shows: an interceptor sees every attempt,
//! the SDK's own retries included, so the number is what AWS (or the emulator) really served.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};

/// Requests sent, shared by every client of one Region.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "rekey-sweep-request-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Every client the sweep uses in one Region.
#[derive(Clone)]
pub struct Clients {
    pub region: String,
    pub counter: Counter,
    pub ec2: aws_sdk_ec2::Client,
    pub s3: aws_sdk_s3::Client,
    pub lambda: aws_sdk_lambda::Client,
    pub ses: aws_sdk_sesv2::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub kms: aws_sdk_kms::Client,
    pub sts: aws_sdk_sts::Client,
}

impl Clients {
    /// Clients of `region` with the credentials and endpoint settings of `sdk`.
    pub fn new(sdk: &aws_types::SdkConfig, region: &str, counter: Counter) -> Clients {
        let r = aws_types::region::Region::new(region.to_string());
        macro_rules! client {
            ($krate:ident) => {
                $krate::Client::from_conf(
                    $krate::config::Builder::from(sdk).region(r.clone()).interceptor(counter.clone()).build(),
                )
            };
        }
        Clients {
            region: region.to_string(),
            ec2: client!(aws_sdk_ec2),
            s3: s3_client(sdk, region, &counter),
            lambda: client!(aws_sdk_lambda),
            ses: client!(aws_sdk_sesv2),
            secrets: client!(aws_sdk_secretsmanager),
            kms: client!(aws_sdk_kms),
            sts: client!(aws_sdk_sts),
            counter,
        }
    }
}

/// An S3 client of `region` (a bucket is read in its own Region).
pub fn s3_client(sdk: &aws_types::SdkConfig, region: &str, counter: &Counter) -> aws_sdk_s3::Client {
    // Emulators (and most S3-compatible stores) serve buckets by path, not by virtual host.
    let custom_endpoint =
        sdk.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some_and(|v| !v.is_empty());
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .region(aws_types::region::Region::new(region.to_string()))
            .interceptor(counter.clone())
            .force_path_style(custom_endpoint)
            .build(),
    )
}
