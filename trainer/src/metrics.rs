// TEMPORARY compile stand-in until trainer/src/metrics/ lands; must not be committed.
use ndarray::ArrayView3;
use serde::{Deserialize, Serialize};
pub type SpacingMm = [f64; 3];
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StructureMetrics { pub dice: f64, pub hausdorff_mm: f64, pub hausdorff95_mm: f64, pub hausdorff95_max_directed_mm: f64, pub mean_surface_distance_mm: f64 }
#[derive(Debug, thiserror::Error)]
#[error("shape")]
pub struct MetricsError;
pub fn dice(p: ArrayView3<bool>, t: ArrayView3<bool>) -> f64 {
    let (mut i, mut a, mut b) = (0usize, 0usize, 0usize);
    ndarray::Zip::from(&p).and(&t).for_each(|&x, &y| { i += usize::from(x && y); a += usize::from(x); b += usize::from(y); });
    if a + b == 0 { f64::NAN } else { 2.0 * i as f64 / (a + b) as f64 }
}
pub fn evaluate_structure(p: ArrayView3<bool>, t: ArrayView3<bool>, _s: SpacingMm) -> Result<StructureMetrics, MetricsError> {
    let d = dice(p, t);
    Ok(StructureMetrics { dice: d, hausdorff_mm: f64::NAN, hausdorff95_mm: f64::NAN, hausdorff95_max_directed_mm: f64::NAN, mean_surface_distance_mm: f64::NAN })
}
