//! NIfTI volumes: reading images and masks, writing predictions with the input's geometry.
//!
//! Arrays are indexed `[i, j, k]` in the file's voxel order, in standard (row-major) memory
//! layout. The header read with a volume is kept untouched (spacing, qform, sform, orientation)
//! and is the reference header of every mask written for the same subject.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
};

use ndarray::{Array3, ArrayView3, Ix3};
use nifti::{
    IntoNdArray, NiftiHeader, NiftiObject, NiftiType, ReaderOptions, writer::WriterOptions,
};

/// Voxel spacing in millimetres along i, j, k.
pub type SpacingMm = [f64; 3];

/// Why a volume could not be read or written. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The file does not exist.
    #[error("file {0} does not exist")]
    Missing(PathBuf),
    /// The file is a Git LFS pointer, not the image it stands for.
    #[error(
        "file {0} is a Git LFS pointer, not a NIfTI image: fetch the real file with `git lfs pull`"
    )]
    LfsPointer(PathBuf),
    /// The file exists but does not decode as NIfTI.
    #[error("file {path} is not a readable NIfTI image ({detail})")]
    Decode { path: PathBuf, detail: String },
    /// The image is not three-dimensional.
    #[error("file {path} has {found} dimensions {dims:?}; a 3D volume is expected")]
    NotThreeD {
        path: PathBuf,
        found: usize,
        dims: Vec<u16>,
    },
    /// Writing failed.
    #[error("cannot write {path}: {detail}")]
    Write { path: PathBuf, detail: String },
}

/// A 3D image with the header it was read with.
#[derive(Debug, Clone)]
pub struct Volume {
    /// Voxel values after applying the header's intensity scaling, indexed `[i, j, k]`.
    pub data: Array3<f32>,
    /// Voxel spacing from `pixdim[1..4]` (float32 in the file, widened exactly).
    pub spacing_mm: SpacingMm,
    /// The original header: geometry of every output written for this volume.
    pub header: NiftiHeader,
}

const LFS_POINTER_PREFIX: &[u8] = b"version https://git-lfs";

/// Reads a `.nii` or `.nii.gz` file as a 3D volume of `f32` (a trailing singleton dimension,
/// as in `[x, y, z, 1]`, is dropped).
pub fn read_volume(path: &Path) -> Result<Volume, VolumeError> {
    let mut start = [0u8; 64];
    let read = File::open(path)
        .and_then(|mut f| f.read(&mut start))
        .map_err(|_| VolumeError::Missing(path.to_owned()))?;
    if start[..read].starts_with(LFS_POINTER_PREFIX) {
        return Err(VolumeError::LfsPointer(path.to_owned()));
    }

    let decode = |detail: String| VolumeError::Decode {
        path: path.to_owned(),
        detail,
    };
    // The nifti crate asserts on inconsistent sizes in a few places; a panic there is a corrupt
    // file, so it is turned into an error that names the file.
    let object = std::panic::catch_unwind(|| ReaderOptions::new().read_file(path))
        .map_err(|_| decode("inconsistent header and data size".into()))?
        .map_err(|e| decode(describe_nifti_error(&e)))?;
    let header = object.header().clone();
    let array = object
        .into_volume()
        .into_ndarray::<f32>()
        .map_err(|e| decode(e.to_string()))?;

    let dims: Vec<u16> = header.dim().map(|d| d.to_vec()).unwrap_or_default();
    let shape = array.shape().to_vec();
    let squeezed = match shape.as_slice() {
        [_, _, _] => array,
        [_, _, _, 1] => array.index_axis_move(ndarray::Axis(3), 0),
        _ => {
            return Err(VolumeError::NotThreeD {
                path: path.to_owned(),
                found: shape.len(),
                dims,
            });
        }
    };
    let data = squeezed
        .into_dimensionality::<Ix3>()
        .map_err(|e| decode(e.to_string()))?
        .as_standard_layout()
        .into_owned();
    let spacing_mm = [
        f64::from(header.pixdim[1]),
        f64::from(header.pixdim[2]),
        f64::from(header.pixdim[3]),
    ];
    Ok(Volume {
        data,
        spacing_mm,
        header,
    })
}

fn describe_nifti_error(error: &nifti::NiftiError) -> String {
    let text = error.to_string();
    let lower = text.to_lowercase();
    if lower.contains("eof") || lower.contains("unexpected end") || lower.contains("corrupt") {
        format!("truncated or corrupt file: {text}")
    } else {
        text
    }
}

/// Writes a mask (0/1 or class indices) as uint8 with the geometry of `reference`.
pub fn write_mask(
    path: &Path,
    mask: ArrayView3<u8>,
    reference: &NiftiHeader,
) -> Result<(), VolumeError> {
    write_with_type(path, mask, reference, NiftiType::Uint8)
}

/// Writes a float volume (for example a posterior) with the geometry of `reference`.
pub fn write_float(
    path: &Path,
    volume: ArrayView3<f32>,
    reference: &NiftiHeader,
) -> Result<(), VolumeError> {
    write_with_type(path, volume, reference, NiftiType::Float32)
}

fn write_with_type<A: nifti::DataElement + bytemuck::Pod>(
    path: &Path,
    volume: ArrayView3<A>,
    reference: &NiftiHeader,
    datatype: NiftiType,
) -> Result<(), VolumeError> {
    let fail = |detail: String| VolumeError::Write {
        path: path.to_owned(),
        detail,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
    }
    let mut header = reference.clone();
    // The reference may describe a 4D file with a trailing singleton; the output is 3D.
    header.dim = [3, 1, 1, 1, 1, 1, 1, 1];
    for (axis, &size) in volume.shape().iter().enumerate() {
        header.dim[axis + 1] = size as u16;
    }
    // Written to a temporary name first so that a crash never leaves a half-written mask.
    let partial = partial_path(path);
    WriterOptions::new(&partial)
        .reference_header(&header)
        .write_nifti_with_type(&volume, datatype)
        .map_err(|e| fail(e.to_string()))?;
    std::fs::rename(&partial, path).map_err(|e| fail(e.to_string()))
}

fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".partial.{name}"))
}
