//! The x86_64 layouts VDDK's binary interface has (from the ABI facts), checked against
//! the generated structs field by field.

use std::mem::{offset_of, size_of};

use vddk_sys::*;

#[test]
fn connect_params_match_vddk_layout() {
    type P = VixDiskLibConnectParams;
    assert_eq!(size_of::<P>(), 128);
    assert_eq!(offset_of!(P, vmxSpec), 0);
    assert_eq!(offset_of!(P, serverName), 8);
    assert_eq!(offset_of!(P, thumbPrint), 16);
    assert_eq!(offset_of!(P, reserved1), 24);
    assert_eq!(offset_of!(P, credType), 32);
    assert_eq!(offset_of!(P, creds), 40);
    assert_eq!(size_of::<VixDiskLibConnectParams__bindgen_ty_1>(), 24);
    assert_eq!(offset_of!(P, port), 64);
    assert_eq!(offset_of!(P, nfcHostPort), 68);
    assert_eq!(offset_of!(P, reserved3), 72);
    assert_eq!(offset_of!(P, reserved4), 80);
    assert_eq!(offset_of!(P, reserved5), 88);
    assert_eq!(offset_of!(P, spec), 96);
    assert_eq!(offset_of!(P, specType), 120);
}

#[test]
fn credential_types_have_vddk_values() {
    assert_eq!(VIXDISKLIB_CRED_UID, 1);
    assert_eq!(VIXDISKLIB_CRED_SESSIONID, 2);
    assert_eq!(VIXDISKLIB_CRED_TICKETID, 3);
    assert_eq!(VIXDISKLIB_CRED_SSPI, 4);
    assert_eq!(VIXDISKLIB_CRED_UNKNOWN, 256);
}

#[test]
fn disk_info_matches_vddk_layout() {
    type I = VixDiskLibInfo;
    assert_eq!(size_of::<I>(), 64);
    assert_eq!(offset_of!(I, biosGeo), 0);
    assert_eq!(offset_of!(I, physGeo), 12);
    assert_eq!(offset_of!(I, capacity), 24);
    assert_eq!(offset_of!(I, adapterType), 32);
    assert_eq!(offset_of!(I, numLinks), 36);
    assert_eq!(offset_of!(I, parentFileNameHint), 40);
    assert_eq!(offset_of!(I, uuid), 48);
    assert_eq!(offset_of!(I, logicalSectorSize), 56);
    assert_eq!(offset_of!(I, physicalSectorSize), 60);
}

#[test]
fn block_lists_match_vddk_layout() {
    assert_eq!(size_of::<VixDiskLibBlock>(), 16);
    assert_eq!(offset_of!(VixDiskLibBlock, offset), 0);
    assert_eq!(offset_of!(VixDiskLibBlock, length), 8);
    assert_eq!(offset_of!(VixDiskLibBlockList, numBlocks), 0);
    assert_eq!(offset_of!(VixDiskLibBlockList, blocks), 8);
    assert_eq!(size_of::<VixError>(), 8);
    assert_eq!(size_of::<VixDiskLibSectorType>(), 8);
}
