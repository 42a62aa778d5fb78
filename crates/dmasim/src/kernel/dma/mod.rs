//! The DMA mapping API (`kernel/dma/` in Linux): the entry points in [`mapping`], the
//! direct-mapping implementation in [`direct`] and the arm64 cache operations it uses.

pub mod bounce;
pub mod direct;
pub mod iommu;
pub mod mapping;
pub mod noncoherent;
pub mod noncontiguous;
pub mod resource;
pub mod sg;
pub mod swiotlb;

use serde::Serialize;

/// `DMA_MAPPING_ERROR` = `~(dma_addr_t)0` (include/linux/dma-mapping.h).
pub const DMA_MAPPING_ERROR: u64 = u64::MAX;

/// `DMA_ATTR_WEAK_ORDERING` (include/linux/dma-mapping.h): accepted, no effect here.
pub const DMA_ATTR_WEAK_ORDERING: u64 = 1 << 1;
/// `DMA_ATTR_SKIP_CPU_SYNC`: map or unmap without cache maintenance.
pub const DMA_ATTR_SKIP_CPU_SYNC: u64 = 1 << 5;

/// `DMA_BIT_MASK(n)`: `(1 << n) - 1`, all ones for n = 64.
pub fn dma_bit_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// `enum dma_data_direction` (include/linux/dma-direction.h), with Linux's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DmaDirection {
    /// `DMA_BIDIRECTIONAL` = 0.
    Bidirectional = 0,
    /// `DMA_TO_DEVICE` = 1.
    ToDevice = 1,
    /// `DMA_FROM_DEVICE` = 2.
    FromDevice = 2,
    /// `DMA_NONE` = 3 (never valid for a mapping).
    None = 3,
}

impl DmaDirection {
    /// The direction for Linux's integer value.
    pub fn from_int(v: i64) -> Option<DmaDirection> {
        match v {
            0 => Some(DmaDirection::Bidirectional),
            1 => Some(DmaDirection::ToDevice),
            2 => Some(DmaDirection::FromDevice),
            3 => Some(DmaDirection::None),
            _ => None,
        }
    }

    /// dma-debug's name ("DMA_TO_DEVICE" is printed as "to device" there; we keep the
    /// constant's short form).
    pub fn name(self) -> &'static str {
        match self {
            DmaDirection::Bidirectional => "BIDIRECTIONAL",
            DmaDirection::ToDevice => "TO_DEVICE",
            DmaDirection::FromDevice => "FROM_DEVICE",
            DmaDirection::None => "NONE",
        }
    }

    /// The C constant's name.
    pub fn const_name(self) -> &'static str {
        match self {
            DmaDirection::Bidirectional => "DMA_BIDIRECTIONAL",
            DmaDirection::ToDevice => "DMA_TO_DEVICE",
            DmaDirection::FromDevice => "DMA_FROM_DEVICE",
            DmaDirection::None => "DMA_NONE",
        }
    }

    /// `valid_dma_direction()`: anything but `DMA_NONE`.
    pub fn is_valid(self) -> bool {
        self != DmaDirection::None
    }
}
