//! Which of an ESXi host's adapters reach a datastore, from the vSphere API: a VMFS
//! datastore's `info.vmfs.extent[0].diskName` is the SCSI disk it lives on; the host's
//! `config.storageDevice` lists that disk (`scsiLun`, by canonical name), its paths
//! (`multipathInfo.lun[].path[]`, each with a `state` and the `adapter` it runs through) and the
//! adapters (`hostBusAdapter`): an iSCSI adapter's initiator is its `iScsiName`, a Fibre Channel
//! adapter's `fc.WWNN:WWPN` (16 hex digits each). Only adapters with an `active` path to the
//! disk count: those are the ones the array already serves for that datastore. Pure code over
//! the answers' trees; the caller falls back to `storage core adapter list` when the datastore
//! is not VMFS or no such path exists.

use transfer_core::delta::vsphere::xml::Node;

/// The disk (canonical name, `naa.…`) a datastore's `info` says it lives on, for VMFS.
pub fn vmfs_disk(info: &Node) -> Option<String> {
    if info.xsi_type.as_deref() != Some("VmfsDatastoreInfo") {
        return None;
    }
    info.child("vmfs")?
        .all("extent")
        .find_map(|e| e.text_of("diskName").filter(|d| !d.is_empty()))
        .map(str::to_owned)
}

/// The initiators of the host's adapters with an active path to `disk`, and those adapters'
/// device names (`vmhba64`), from the host's `config.storageDevice`.
pub fn active_initiators(storage: &Node, disk: &str) -> (Vec<String>, Vec<String>) {
    let mut ids = Vec::new();
    let mut names = Vec::new();
    let Some(lun_key) = storage
        .all("scsiLun")
        .find(|l| l.text_of("canonicalName") == Some(disk))
        .and_then(|l| l.text_of("key"))
    else {
        return (ids, names);
    };
    let Some(mp) = storage.child("multipathInfo") else {
        return (ids, names);
    };
    for lun in mp.all("lun").filter(|l| l.text_of("lun") == Some(lun_key)) {
        for path in lun.all("path") {
            let state = path.text_of("state").or(path.text_of("pathState"));
            if state != Some("active") {
                continue;
            }
            let Some(adapter) = path.text_of("adapter") else {
                continue;
            };
            let Some(hba) = storage
                .all("hostBusAdapter")
                .find(|h| h.text_of("key") == Some(adapter))
            else {
                continue;
            };
            let id = match hba.xsi_type.as_deref() {
                Some("HostInternetScsiHba") => hba.text_of("iScsiName").map(str::to_owned),
                Some("HostFibreChannelHba" | "HostFibreChannelOverEthernetHba") => {
                    let wwn = |k: &str| hba.text_of(k)?.parse::<i64>().ok();
                    match (wwn("nodeWorldWideName"), wwn("portWorldWideName")) {
                        (Some(n), Some(p)) => {
                            Some(format!("fc.{:016x}:{:016x}", n as u64, p as u64))
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(id) = id.map(|i| i.to_ascii_lowercase()) {
                if !ids.contains(&id) {
                    ids.push(id);
                    names.push(hba.text_of("device").unwrap_or("").to_owned());
                }
            }
        }
    }
    (ids, names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use transfer_core::delta::vsphere::xml;

    fn node(s: &str) -> Node {
        let doc = format!(
            r#"<val xmlns="urn:vim25" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" {s}"#
        );
        xml::parse(doc.as_bytes(), "test").unwrap()
    }

    #[test]
    fn a_vmfs_datastore_names_its_disk() {
        let info = node(
            r#"xsi:type="VmfsDatastoreInfo"><name>ds1</name><vmfs><name>ds1</name><extent><diskName>naa.600a0980aa</diskName><partition>1</partition></extent></vmfs></val>"#,
        );
        assert_eq!(vmfs_disk(&info).as_deref(), Some("naa.600a0980aa"));
        let nfs = node(r#"xsi:type="NasDatastoreInfo"><name>nfs</name></val>"#);
        assert_eq!(vmfs_disk(&nfs), None);
    }

    #[test]
    fn only_adapters_with_an_active_path_to_the_disk_count() {
        let storage = node(
            r#"xsi:type="HostStorageDeviceInfo">
            <hostBusAdapter xsi:type="HostInternetScsiHba"><key>key-vim.host.InternetScsiHba-vmhba64</key><device>vmhba64</device><iScsiName>iqn.1998-01.com.vmware:esx1-1a2b</iScsiName></hostBusAdapter>
            <hostBusAdapter xsi:type="HostFibreChannelHba"><key>key-vim.host.FibreChannelHba-vmhba2</key><device>vmhba2</device><nodeWorldWideName>2305843009213693953</nodeWorldWideName><portWorldWideName>-8070450532247928831</portWorldWideName></hostBusAdapter>
            <hostBusAdapter xsi:type="HostFibreChannelHba"><key>key-vim.host.FibreChannelHba-vmhba3</key><device>vmhba3</device><nodeWorldWideName>1</nodeWorldWideName><portWorldWideName>2</portWorldWideName></hostBusAdapter>
            <scsiLun xsi:type="HostScsiDisk"><key>key-vim.host.ScsiDisk-0200</key><canonicalName>naa.600a0980aa</canonicalName></scsiLun>
            <scsiLun xsi:type="HostScsiDisk"><key>key-vim.host.ScsiDisk-0300</key><canonicalName>naa.other</canonicalName></scsiLun>
            <multipathInfo>
              <lun><key>l1</key><id>0200</id><lun>key-vim.host.ScsiDisk-0200</lun>
                <path><key>p1</key><name>vmhba64:C0:T0:L3</name><state>active</state><adapter>key-vim.host.InternetScsiHba-vmhba64</adapter></path>
                <path><key>p2</key><name>vmhba2:C0:T1:L3</name><state>active</state><adapter>key-vim.host.FibreChannelHba-vmhba2</adapter></path>
                <path><key>p3</key><name>vmhba3:C0:T1:L3</name><state>dead</state><adapter>key-vim.host.FibreChannelHba-vmhba3</adapter></path>
              </lun>
              <lun><key>l2</key><id>0300</id><lun>key-vim.host.ScsiDisk-0300</lun>
                <path><key>p4</key><name>vmhba3:C0:T1:L4</name><state>active</state><adapter>key-vim.host.FibreChannelHba-vmhba3</adapter></path>
              </lun>
            </multipathInfo></val>"#,
        );
        let (ids, names) = active_initiators(&storage, "naa.600a0980aa");
        assert_eq!(
            ids,
            vec![
                "iqn.1998-01.com.vmware:esx1-1a2b",
                "fc.2000000000000001:9000000000000001"
            ]
        );
        assert_eq!(names, vec!["vmhba64", "vmhba2"]);
        assert_eq!(active_initiators(&storage, "naa.none"), (vec![], vec![]));
    }
}
