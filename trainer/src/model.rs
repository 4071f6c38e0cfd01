//! A model: the resolved Experiment, its network and weights, on a device.

use std::path::Path;

use anyhow::Context;
use tch::{Device, Kind, Tensor, nn::VarStore};
use voxel_crds::{
    Experiment,
    experiment::{Architecture, Task},
};

use crate::{
    error::{bad_config, bad_data},
    infer::sliding_window::{Tiling, sliding_window},
    network::{UNet3d, UNet3dConfig},
    outputs,
};

/// Tiles per network call during sliding-window inference.
const TILE_BATCH: usize = 2;

/// A network with its configuration.
pub struct Model {
    /// The resolved Experiment this model was (or is being) trained from.
    pub experiment: Experiment,
    /// Holds the weights.
    pub vs: VarStore,
    /// The network.
    pub network: UNet3d,
    /// Where the weights live.
    pub device: Device,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("network", &self.network)
            .field("device", &self.device)
            .finish()
    }
}

/// Fails with a configuration error when the spec asks for what this trainer cannot do.
pub fn check_supported(experiment: &Experiment) -> anyhow::Result<()> {
    let model = &experiment.spec.model;
    if model.task != Task::Segmentation {
        return Err(bad_config(format!(
            "spec.model.task: {:?} is not trained by this release of voxel-trainer; only \
             Segmentation is",
            model.task
        )));
    }
    match model.architecture {
        Architecture::UNet3D => Ok(()),
    }
}

impl Model {
    /// A network with freshly initialised weights (from LibTorch's current seed).
    pub fn new(experiment: &Experiment, device: Device) -> anyhow::Result<Self> {
        check_supported(experiment)?;
        let spec = &experiment.spec;
        let vs = VarStore::new(device);
        let config = UNet3dConfig::from_spec(
            &spec.model.network,
            spec.model.image_channels.len(),
            spec.model.structures.len() + 1,
            spec.training.precision,
        );
        let network = UNet3d::new(&vs.root(), config);
        Ok(Self {
            experiment: experiment.clone(),
            vs,
            network,
            device,
        })
    }

    /// Loads a trained model from a training output folder.
    pub fn load(dir: &Path, device: Device) -> anyhow::Result<Self> {
        let config_path = dir.join(outputs::RESOLVED_CONFIG);
        let experiment = voxel_crds::manifest::read_experiment(&config_path)
            .map_err(|e| bad_config(format!("model folder {}: {e}", dir.display())))?;
        let mut model = Self::new(&experiment, device)?;
        let weights = dir.join(outputs::MODEL_WEIGHTS);
        if !weights.exists() {
            return Err(bad_data(format!(
                "model folder {}: no {} (has training finished?)",
                dir.display(),
                outputs::MODEL_WEIGHTS
            )));
        }
        model
            .vs
            .load(&weights)
            .with_context(|| format!("loading weights {}", weights.display()))?;
        Ok(model)
    }

    /// The inference tiling of the spec.
    pub fn tiling(&self) -> Tiling {
        let pre = &self.experiment.spec.model.preprocessing;
        let tile = pre.tile_size.unwrap_or(pre.crop_size);
        Tiling {
            tile: tile.map(i64::from),
            overlap: pre.tile_overlap,
            batch: TILE_BATCH,
        }
    }

    /// Posteriors `[class, i, j, k]` (float32, CPU) of a normalised image `[channel, i, j, k]`.
    pub fn posteriors(&self, image: &Tensor) -> Tensor {
        let pad: Vec<f64> = (0..image.size()[0])
            .map(|c| image.get(c).min().double_value(&[]))
            .collect();
        sliding_window(image, self.tiling(), &pad, self.device, &|tiles| {
            self.network.forward_t(tiles, false).softmax(1, Kind::Float)
        })
    }
}
