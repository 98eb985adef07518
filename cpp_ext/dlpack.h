// Minimal DLPack ABI (https://github.com/dmlc/dlpack, v0.8 layout, which later versions keep for
// the legacy "dltensor" capsule protocol): just what osr_sdk._spherical produces and consumes.
//
// Capsule protocol: a producer's __dlpack__ returns a PyCapsule named "dltensor" holding a
// DLManagedTensor*. A consumer that takes ownership renames it "used_dltensor" and later calls
// the deleter; otherwise the capsule's destructor calls the deleter while the name is unchanged.
#pragma once

#include <cstdint>

extern "C" {

typedef enum {
  kDLCPU = 1,
  kDLCUDA = 2,
} DLDeviceType;

typedef struct {
  int32_t device_type;  // a DLDeviceType value (an enum-sized int in the ABI)
  int32_t device_id;
} DLDevice;

typedef enum {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
} DLDataTypeCode;

typedef struct {
  uint8_t code;  // a DLDataTypeCode value
  uint8_t bits;
  uint16_t lanes;
} DLDataType;

typedef struct {
  void* data;  // plus byte_offset: the first element
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL means compact row-major
  uint64_t byte_offset;
} DLTensor;

typedef struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensor* self);
} DLManagedTensor;

}  // extern "C"

constexpr const char* kDLTensorCapsuleName = "dltensor";
