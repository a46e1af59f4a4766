//! Storage copy offload (Forklift's vsphere-xcopy populator): the storage array's side. The
//! populator maps the target PV's LUN to the ESXi host that clones the VMDK onto it, and
//! afterwards restores the LUN's mappings as they were. Each vendor's REST API sits behind
//! [`StorageArray`]; every call is idempotent (mapping a LUN that is mapped, or unmapping one
//! that is not, succeeds), so that a restarted populator can finish or clean up what a killed
//! one left.
//!
//! Vendors here: NetApp ONTAP ([`ontap`]) and Pure Storage FlashArray ([`pure`]).
//! `--storage-vendor-product` values follow Forklift's.

pub mod esxcli;
pub mod ontap;
pub mod paths;
pub mod populate;
pub mod pure;
pub mod ssh;
pub mod vmkfstools;

use async_trait::async_trait;
use transfer_core::{Error, ErrorKind, Result};

/// The `--storage-vendor-product` values this populator supports.
pub const PRODUCTS: &[&str] = &["ontap", "pureFlashArray"];

/// The initiators of the ESXi host that must reach the LUN, as ESXi names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Initiators {
    /// iSCSI initiators (`iqn.1998-01.com.vmware:...`, `eui....`).
    pub iscsi: Vec<String>,
    /// Fibre Channel ports as `WWNN:WWPN` (ESXi's `fc.WWNN:WWPN` without the prefix), in hex.
    pub fc: Vec<String>,
}

impl Initiators {
    /// Sorts ESXi adapter identifiers (`iqn.`, `eui.`, `fc.WWNN:WWPN`) into initiators.
    pub fn from_esxi(ids: &[String]) -> Result<Initiators> {
        let mut out = Initiators::default();
        for id in ids {
            if id.starts_with("iqn.") || id.starts_with("eui.") {
                out.iscsi.push(id.clone());
            } else if let Some(fc) = id.strip_prefix("fc.") {
                out.fc.push(fc.to_ascii_lowercase());
            } else {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("ESXi adapter '{id}' is neither iSCSI nor Fibre Channel"),
                ));
            }
        }
        if out.iscsi.is_empty() && out.fc.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                "the ESXi host has no iSCSI or Fibre Channel adapter with a path to the datastore",
            ));
        }
        Ok(out)
    }

    /// The SAN protocol, as Forklift's `storage_protocol` metric label names it: `iscsi` or
    /// `fc` when every initiator is of that kind, `n/a` when both are.
    pub fn protocol(&self) -> &'static str {
        match (self.iscsi.is_empty(), self.fc.is_empty()) {
            (false, true) => "iscsi",
            (true, false) => "fc",
            _ => "n/a",
        }
    }

    /// The WWPN of each FC port (what an array's initiator group lists), `aa:bb:...` form.
    pub fn fc_wwpns(&self) -> Vec<String> {
        self.fc
            .iter()
            .map(|p| {
                let wwpn = p.rsplit_once(':').map_or(p.as_str(), |(_, w)| w);
                colon_hex(wwpn)
            })
            .collect()
    }
}

/// `2100001b32a1b2c3` as `21:00:00:1b:32:a1:b2:c3` (already colon-separated stays).
fn colon_hex(s: &str) -> String {
    if s.contains(':') {
        return s.to_ascii_lowercase();
    }
    s.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(":")
}

/// A LUN of the array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lun {
    /// The vendor's id for it (ONTAP: the LUN's uuid).
    pub id: String,
    /// Its name (ONTAP: `/vol/VOLUME/lun0`).
    pub name: String,
    /// The SCSI device id ESXi sees (`naa.600a0980...`).
    pub naa: String,
}

/// What the array is told about the target PV: its name, CSI volume handle and attributes.
#[derive(Debug, Clone, Default)]
pub struct Volume {
    /// The PV's name.
    pub name: String,
    /// `spec.csi.volumeHandle`.
    pub handle: String,
    /// `spec.csi.volumeAttributes`.
    pub attributes: Vec<(String, String)>,
}

impl Volume {
    /// The attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What an array says of itself, for the `storage_array_info` metric (Forklift's labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayInfo {
    /// `NetApp`, `Pure Storage`.
    pub vendor: &'static str,
    /// `ONTAP`, `FlashArray`.
    pub product: &'static str,
    /// The model, `n/a` when the array does not say.
    pub model: String,
    /// The software version, `n/a` when the array does not say.
    pub version: String,
}

/// One storage array's REST API, as the populator uses it.
#[async_trait]
pub trait StorageArray: Send + Sync {
    /// The vendor product (`ontap`).
    fn product(&self) -> &'static str;

    /// The array's vendor, product, model and version.
    async fn info(&self) -> Result<ArrayInfo>;

    /// Makes sure an initiator group (host) for `host` holds `initiators`; returns its name.
    async fn ensure_group(&self, host: &str, initiators: &Initiators) -> Result<String>;

    /// The LUN behind the PV.
    async fn lun(&self, volume: &Volume) -> Result<Lun>;

    /// The groups `lun` is mapped to now.
    async fn mappings(&self, lun: &Lun) -> Result<Vec<String>>;

    /// Maps `lun` to `group` (nothing to do when it is).
    async fn map(&self, lun: &Lun, group: &str) -> Result<()>;

    /// Unmaps `lun` from `group` (nothing to do when it is not).
    async fn unmap(&self, lun: &Lun, group: &str) -> Result<()>;
}

/// The prefix of the initiator groups the populator makes (Forklift's: `xcopy-<host id>`).
pub const GROUP_PREFIX: &str = "xcopy-";

/// The populator's group (host) name for the host id `host`: [`GROUP_PREFIX`] and the id, each
/// character that `keep` refuses replaced by `-`, at most `max` characters (the array's rules).
pub fn group_name(host: &str, keep: impl Fn(char) -> bool, max: usize) -> String {
    let clean: String = host
        .chars()
        .map(|c| if keep(c) { c } else { '-' })
        .collect();
    format!("{GROUP_PREFIX}{clean}").chars().take(max).collect()
}

/// Ends the populator's use of `lun`: unmaps it from `group` and from any other populator
/// group (`xcopy-...`, a killed run's) that `before` does not hold, and maps it again to what
/// `before` holds and is missing. Mappings someone else added meanwhile stay.
pub async fn release(
    array: &dyn StorageArray,
    lun: &Lun,
    group: &str,
    before: &[String],
) -> Result<()> {
    let now = array.mappings(lun).await?;
    for g in now
        .iter()
        .filter(|g| (*g == group || g.starts_with(GROUP_PREFIX)) && !before.contains(g))
    {
        array.unmap(lun, g).await?;
    }
    for g in before.iter().filter(|g| !now.contains(g)) {
        array.map(lun, g).await?;
    }
    Ok(())
}

/// Puts `lun`'s mappings back to `before`: unmaps what was added, maps again what was removed.
pub async fn restore(array: &dyn StorageArray, lun: &Lun, before: &[String]) -> Result<()> {
    let now = array.mappings(lun).await?;
    for g in now.iter().filter(|g| !before.contains(g)) {
        array.unmap(lun, g).await?;
    }
    for g in before.iter().filter(|g| !now.contains(g)) {
        array.map(lun, g).await?;
    }
    Ok(())
}

/// Refuses a `--storage-vendor-product` this populator does not support, naming those it does.
pub fn check_product(product: &str) -> Result<()> {
    if PRODUCTS.contains(&product) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "--storage-vendor-product {product} is not supported (supported: {})",
                PRODUCTS.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esxi_adapters_become_initiators() {
        let ids = [
            "iqn.1998-01.com.vmware:esx1-4f1b".to_owned(),
            "fc.20000025b5aa0001:20000025B5AA0002".to_owned(),
        ];
        let i = Initiators::from_esxi(&ids).unwrap();
        assert_eq!(i.iscsi, vec!["iqn.1998-01.com.vmware:esx1-4f1b"]);
        assert_eq!(i.fc_wwpns(), vec!["20:00:00:25:b5:aa:00:02"]);
        assert_eq!(i.protocol(), "n/a");
        let iqn = Initiators::from_esxi(&["iqn.1998-01.com.vmware:esx1".to_owned()]).unwrap();
        assert_eq!(iqn.protocol(), "iscsi");
        let fc = Initiators::from_esxi(&["fc.20000025b5aa0001:20000025b5aa0002".to_owned()]);
        assert_eq!(fc.unwrap().protocol(), "fc");
        assert!(Initiators::from_esxi(&["sas.5000c5".to_owned()]).is_err());
        assert!(Initiators::from_esxi(&[]).is_err());
    }

    #[test]
    fn unsupported_products_are_refused_with_the_list() {
        assert!(check_product("ontap").is_ok());
        let e = check_product("vantara").unwrap_err().to_string();
        assert!(e.contains("vantara") && e.contains("ontap"), "{e}");
    }
}
