//! Networks. Each takes `[batch, channel, i, j, k]` images and returns
//! `[batch, class, i, j, k]` logits, class 0 being background.

pub mod unet3d;

pub use unet3d::{UNet3d, UNet3dConfig};
