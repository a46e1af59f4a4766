/*
 * ferry's declarations of the part of VMware's VixDiskLib (Virtual Disk Development Kit) API
 * that ferry uses, written from VMware's public VDDK programming guide and API reference.
 * This is not VMware's header: VDDK is proprietary, never shipped with ferry and never needed
 * to build it. The library is loaded at run time from the directory the user provides.
 *
 * Layout facts (x86_64, LP64) that the Rust side asserts:
 *   VixDiskLibConnectParams 128 bytes, VixDiskLibInfo 64 bytes,
 *   VixDiskLibBlock 16 bytes, VixDiskLibBlockList blocks at offset 8.
 * Sectors are 512 bytes.
 */
#ifndef FERRY_VIXDISKLIB_H
#define FERRY_VIXDISKLIB_H

#include <stdarg.h>
#include <stdint.h>

/* VIX error code: 0 is success; the low 16 bits carry the error number. */
typedef uint64_t VixError;

/* VixError values ferry looks at. */
#define VIX_OK 0
#define VIX_E_FAIL 1
#define VIX_E_INVALID_ARG 3
#define VIX_E_FILE_NOT_FOUND 4
#define VIX_E_NOT_SUPPORTED 6
#define VIX_ASYNC 25000

/* Open flags. */
#define VIXDISKLIB_FLAG_OPEN_UNBUFFERED 1
#define VIXDISKLIB_FLAG_OPEN_SINGLE_LINK 2
#define VIXDISKLIB_FLAG_OPEN_READ_ONLY 4

/* Sizes: bytes per sector; QueryAllocatedBlocks' smallest chunk (sectors) and most chunks per call. */
#define VIXDISKLIB_SECTOR_SIZE 512
#define VIXDISKLIB_MIN_CHUNK_SIZE 128
#define VIXDISKLIB_MAX_CHUNK_NUMBER (512 * 1024)

/* VMware's boolean (one byte). */
typedef char Bool;

/* A count or offset in 512-byte sectors. */
typedef uint64_t VixDiskLibSectorType;

/* Opaque handles. */
typedef struct VixDiskLibConnectParam *VixDiskLibConnection;
typedef struct VixDiskLibHandleStruct *VixDiskLibHandle;

/* How a connection authenticates. */
typedef enum {
    VIXDISKLIB_CRED_UID = 1,
    VIXDISKLIB_CRED_SESSIONID = 2,
    VIXDISKLIB_CRED_TICKETID = 3,
    VIXDISKLIB_CRED_SSPI = 4,
    VIXDISKLIB_CRED_UNKNOWN = 256
} VixDiskLibCredType;

/* What the connection names: a VM (vmxSpec) or a first-class disk. */
typedef enum {
    VIXDISKLIB_SPEC_VMX = 0,
    VIXDISKLIB_SPEC_VSTORAGE_OBJECT = 1,
    VIXDISKLIB_SPEC_UNKNOWN = 2
} VixDiskLibSpecType;

typedef enum {
    VIXDISKLIB_ADAPTER_IDE = 1,
    VIXDISKLIB_ADAPTER_SCSI_BUSLOGIC = 2,
    VIXDISKLIB_ADAPTER_SCSI_LSILOGIC = 3,
    VIXDISKLIB_ADAPTER_UNKNOWN = 256
} VixDiskLibAdapterType;

typedef struct {
    char *userName;
    char *password;
} VixDiskLibUidPasswdCreds;

typedef struct {
    char *cookie;
    char *userName;
    char *key;
} VixDiskLibSessionIdCreds;

typedef struct {
    char *id;
    char *datastoreMoRef;
    char *ssId;
} VixDiskLibVStorageObjectSpec;

/* Connection parameters (128 bytes). */
typedef struct {
    char *vmxSpec;                 /* "moref=vm-N" */
    char *serverName;              /* vCenter or ESXi host */
    char *thumbPrint;              /* SHA-1 "01:23:..." of the server's certificate */
    long reserved1;
    VixDiskLibCredType credType;
    union {
        VixDiskLibUidPasswdCreds uid;
        VixDiskLibSessionIdCreds sessionId;
    } creds;
    uint32_t port;                 /* 443 by default */
    uint32_t nfcHostPort;          /* 902 by default */
    char *reserved3;
    char reserved4[8];
    void *reserved5;
    union {
        VixDiskLibVStorageObjectSpec vStorageObjSpec;
    } spec;
    VixDiskLibSpecType specType;
} VixDiskLibConnectParams;

typedef struct {
    uint32_t cylinders;
    uint32_t heads;
    uint32_t sectors;
} VixDiskLibGeometry;

/* Disk information (64 bytes), freed with VixDiskLib_FreeInfo. */
typedef struct {
    VixDiskLibGeometry biosGeo;
    VixDiskLibGeometry physGeo;
    VixDiskLibSectorType capacity;  /* in sectors */
    VixDiskLibAdapterType adapterType;
    int numLinks;
    char *parentFileNameHint;
    char *uuid;
    uint32_t logicalSectorSize;
    uint32_t physicalSectorSize;
} VixDiskLibInfo;

/* An allocated range, in sectors. */
typedef struct {
    VixDiskLibSectorType offset;
    VixDiskLibSectorType length;
} VixDiskLibBlock;

/* A list of allocated ranges, freed with VixDiskLib_FreeBlockList. */
typedef struct {
    uint32_t numBlocks;
    VixDiskLibBlock blocks[1];      /* numBlocks entries */
} VixDiskLibBlockList;

/* Log callbacks take a printf format and its arguments. */
typedef void (*VixDiskLibGenericLogFunc)(const char *fmt, va_list args);

/* Completion of an asynchronous call. */
typedef void (*VixDiskLibCompletionCB)(void *cbData, VixError result);

VixError VixDiskLib_InitEx(uint32_t majorVersion, uint32_t minorVersion,
                           VixDiskLibGenericLogFunc log, VixDiskLibGenericLogFunc warn,
                           VixDiskLibGenericLogFunc panic, const char *libDir,
                           const char *configFile);
void VixDiskLib_Exit(void);

VixDiskLibConnectParams *VixDiskLib_AllocateConnectParams(void);
void VixDiskLib_FreeConnectParams(VixDiskLibConnectParams *connectParams);

VixError VixDiskLib_PrepareForAccess(const VixDiskLibConnectParams *connectParams,
                                     const char *identity);
VixError VixDiskLib_EndAccess(const VixDiskLibConnectParams *connectParams,
                              const char *identity);

VixError VixDiskLib_ConnectEx(const VixDiskLibConnectParams *connectParams, Bool readOnly,
                              const char *snapshotRef, const char *transportModes,
                              VixDiskLibConnection *connection);
VixError VixDiskLib_Disconnect(VixDiskLibConnection connection);

VixError VixDiskLib_Open(const VixDiskLibConnection connection, const char *path,
                         uint32_t flags, VixDiskLibHandle *diskHandle);
VixError VixDiskLib_Close(VixDiskLibHandle diskHandle);

VixError VixDiskLib_GetInfo(VixDiskLibHandle diskHandle, VixDiskLibInfo **info);
void VixDiskLib_FreeInfo(VixDiskLibInfo *info);

const char *VixDiskLib_GetTransportMode(VixDiskLibHandle diskHandle);
const char *VixDiskLib_ListTransportModes(void);

VixError VixDiskLib_Read(VixDiskLibHandle diskHandle, VixDiskLibSectorType startSector,
                         VixDiskLibSectorType numSectors, uint8_t *readBuffer);
VixError VixDiskLib_ReadAsync(VixDiskLibHandle diskHandle, VixDiskLibSectorType startSector,
                              VixDiskLibSectorType numSectors, uint8_t *readBuffer,
                              VixDiskLibCompletionCB callback, void *cbData);
VixError VixDiskLib_Wait(VixDiskLibHandle diskHandle);
VixError VixDiskLib_Flush(VixDiskLibHandle diskHandle);

VixError VixDiskLib_QueryAllocatedBlocks(VixDiskLibHandle diskHandle,
                                         VixDiskLibSectorType startSector,
                                         VixDiskLibSectorType numSectors,
                                         VixDiskLibSectorType chunkSize,
                                         VixDiskLibBlockList **blockList);
VixError VixDiskLib_FreeBlockList(VixDiskLibBlockList *blockList);

char *VixDiskLib_GetErrorText(VixError err, const char *locale);
void VixDiskLib_FreeErrorText(char *errMsg);

#endif /* FERRY_VIXDISKLIB_H */
