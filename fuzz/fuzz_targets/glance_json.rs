//! OpenStack answers: the Keystone v3 token answer (`token.catalog`, where `image_endpoint`
//! picks Glance by interface and region) and Glance's image record (`image_checksum` from
//! `os_hash_algo`/`os_hash_value` or `checksum`). The input is one JSON document, read both as
//! a token answer and as an image record (and its top level as a bare catalog).
//!
//! Holds: no panic; an endpoint returned is the `url` of an endpoint of an `image` service with
//! the interface asked and, when a region is asked, that region; the two URLs
//! `GlanceSource::open` builds from it parse together (the second is `expect`ed there); a
//! checksum is found exactly when the record has one, and is the one it names.

#![no_main]

use ferry_fuzz::debug;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use transfer_core::source::glance::{image_checksum, image_endpoint};
use transfer_core::source::stream::Checksum;
use url::Url;

const IMAGE: &str = "2b8e1c7a-52c3-4d8e-9a0b-5d3f0e6a7c11";

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for catalog in [&v["token"]["catalog"], &v] {
        let mut regions = vec![None, Some("RegionOne".to_owned())];
        regions.extend(first_region(catalog).map(Some));
        for region in &regions {
            for interface in ["public", "internal", "admin"] {
                let found = image_endpoint(catalog, region.as_deref(), interface);
                debug(|| format!("{interface} in {region:?}: {found:?}"));
                if let Some(url) = found {
                    assert!(
                        listed(catalog, region.as_deref(), interface, &url),
                        "{url:?} is not an {interface} image endpoint in {region:?}"
                    );
                    check_urls(&url);
                }
            }
        }
    }

    let hash = v["os_hash_algo"].as_str().zip(v["os_hash_value"].as_str());
    let md5 = v["checksum"].as_str();
    debug(|| format!("checksum: {:?}", image_checksum(&v)));
    match image_checksum(&v) {
        Ok(Some(c)) => {
            let named = match hash {
                Some((algo, value)) => format!("{algo}:{value}"),
                None => format!("md5:{}", md5.expect("a checksum from somewhere")),
            };
            assert_eq!(Checksum::parse(&named).ok(), Some(c), "{named}");
        }
        Ok(None) => assert!(hash.is_none() && md5.is_none(), "a checksum ignored"),
        Err(_) => assert!(
            hash.is_some() || md5.is_some(),
            "an error without a checksum"
        ),
    }
});

fn first_region(catalog: &Value) -> Option<String> {
    catalog.as_array()?.iter().find_map(|s| {
        s["endpoints"]
            .as_array()?
            .iter()
            .find_map(|e| e["region"].as_str().map(str::to_owned))
    })
}

fn listed(catalog: &Value, region: Option<&str>, interface: &str, url: &str) -> bool {
    let Some(services) = catalog.as_array() else {
        return false;
    };
    services.iter().filter(|s| s["type"] == "image").any(|s| {
        s["endpoints"].as_array().is_some_and(|eps| {
            eps.iter().any(|e| {
                e["interface"] == interface
                    && e["url"] == url
                    && region.is_none_or(|r| e["region"] == r || e["region_id"] == r)
            })
        })
    })
}

/// The image and file URLs, built as `GlanceSource::open` builds them from the endpoint.
fn check_urls(endpoint: &str) {
    let ep = endpoint.trim_end_matches('/');
    let ep = ep.strip_suffix("/v2").unwrap_or(ep);
    if Url::parse(&format!("{ep}/v2/images/{IMAGE}")).is_ok() {
        assert!(
            Url::parse(&format!("{ep}/v2/images/{IMAGE}/file")).is_ok(),
            "endpoint {endpoint:?}: the image URL parses but not its file URL"
        );
    }
}
