//! A run directory: `config.json`, `metrics.jsonl`, checkpoints in safetensors, `plots/`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use crate::optim::SgdMomentum;
use crate::TrainError;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum MetricsRow {
    /// Training epoch `epoch` (1-based) finished.
    Train {
        epoch: usize,
        loss: f64,
        /// Mean loss of the first and last quarter of the epoch's batches.
        #[serde(default)]
        loss_start: f64,
        #[serde(default)]
        loss_end: f64,
        images_per_s: f64,
        /// DeepCluster only: the k-means objective and non-empty clusters of this epoch.
        kmeans_objective: Option<f64>,
        non_empty_clusters: Option<usize>,
        /// NMI between this epoch's pseudo-labels and the previous epoch's.
        nmi_vs_previous: Option<f64>,
        seconds: f64,
    },
    /// The model after `epoch` epochs (0: at initialisation), against held-out labels.
    Eval {
        epoch: usize,
        knn_top1: f64,
        /// kNN of the PCA-whitened features (see `eval`); absent in runs from before it.
        #[serde(default)]
        knn_top1_whitened: Option<f64>,
        nmi: f64,
        ari: f64,
        accuracy: f64,
    },
    /// Without labels: k-means (k clusters) on the L2-normalised training embeddings after
    /// `epoch` epochs.
    LabelFree {
        epoch: usize,
        k: usize,
        kmeans_objective: f64,
        /// Entropy of the cluster sizes over log(k): 1 for equal clusters, 0 for one.
        cluster_entropy: f64,
        /// NMI between this clustering and the previous label-free one.
        nmi_vs_previous: Option<f64>,
    },
}

#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn create(root: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(root.join("plots")).map_err(|e| TrainError::io(root, e))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn open(root: &Path) -> Result<Self, TrainError> {
        if !root.join("config.json").exists() {
            return Err(TrainError::Checkpoint {
                path: root.into(),
                reason: "not a run directory (no config.json)".into(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), TrainError> {
        let p = self.path(name);
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| TrainError::Json {
            path: p.clone(),
            source,
        })?;
        write_atomic(&p, &bytes)
    }

    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, TrainError> {
        let p = self.path(name);
        let bytes = std::fs::read(&p).map_err(|e| TrainError::io(&p, e))?;
        serde_json::from_slice(&bytes).map_err(|source| TrainError::Json { path: p, source })
    }

    pub fn append_metrics<T: Serialize>(&self, row: &T) -> Result<(), TrainError> {
        let p = self.path("metrics.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| TrainError::io(&p, e))?;
        let mut line = serde_json::to_vec(row).map_err(|source| TrainError::Json {
            path: p.clone(),
            source,
        })?;
        line.push(b'\n');
        f.write_all(&line).map_err(|e| TrainError::io(&p, e))
    }

    /// Every row of `metrics.jsonl` (none if the file does not exist yet).
    pub fn read_metrics<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, TrainError> {
        let p = self.path("metrics.jsonl");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(TrainError::io(&p, e)),
        };
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|source| TrainError::JsonLine {
                    path: p.clone(),
                    line: i + 1,
                    source,
                })
            })
            .collect()
    }

    /// Model weights, optimiser momentum (keyed by variable name) and any extra tensors.
    pub fn save_checkpoint(
        &self,
        model: &VarMap,
        opt: &SgdMomentum,
        names: &[String],
        extra: &[(&str, Tensor)],
    ) -> Result<(), TrainError> {
        self.save_weights("model.safetensors", model)?;
        let mut state: HashMap<String, Tensor> = HashMap::new();
        for (name, buf) in names.iter().zip(opt.buffers()) {
            if let Some(b) = buf {
                state.insert(format!("momentum.{name}"), b.clone());
            }
        }
        for (k, t) in extra {
            state.insert((*k).to_string(), t.clone());
        }
        publish(&self.path("state.safetensors"), |tmp| {
            candle_core::safetensors::save(&state, tmp).map_err(|source| TrainError::Tensors {
                path: tmp.into(),
                source,
            })
        })
    }

    /// Writes the weights of `model` to the run's file `name`: a temporary file, then a
    /// rename, so that a crash leaves the old file or the new one, never half of one.
    pub fn save_weights(&self, name: &str, model: &VarMap) -> Result<(), TrainError> {
        publish(&self.path(name), |tmp| {
            model.save(tmp).map_err(|source| TrainError::Tensors {
                path: tmp.into(),
                source,
            })
        })
    }

    /// Loads weights saved by [`Self::save_checkpoint`] into `model`, whose variables must
    /// all be present with the same shapes.
    pub fn load_model(&self, model: &mut VarMap) -> Result<(), TrainError> {
        self.load_weights("model.safetensors", model)
    }

    /// Loads the weights in the run's file `name` into `model` (same variables and shapes).
    pub fn load_weights(&self, name: &str, model: &mut VarMap) -> Result<(), TrainError> {
        let p = self.path(name);
        model
            .load(&p)
            .map_err(|source| TrainError::Tensors { path: p, source })
    }

    pub fn load_state(&self, device: &Device) -> Result<HashMap<String, Tensor>, TrainError> {
        let p = self.path("state.safetensors");
        candle_core::safetensors::load(&p, device)
            .map_err(|source| TrainError::Tensors { path: p, source })
    }
}

pub(crate) fn write_atomic(p: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    publish(p, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| TrainError::io(tmp, e))
    })
}

/// Writes `path` through a temporary file and a rename, so a crash never leaves it half
/// written.
fn publish(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// The variables of a VarMap in name order, so optimiser state lines up across runs.
pub fn sorted_vars(vm: &VarMap) -> (Vec<String>, Vec<candle_core::Var>) {
    let data = vm.data().lock().expect("VarMap lock");
    let mut names: Vec<String> = data.keys().cloned().collect();
    names.sort();
    let vars = names.iter().map(|n| data[n].clone()).collect();
    (names, vars)
}

/// Restores momentum buffers saved under `momentum.<name>`.
pub fn restore_momentum(
    opt: &mut SgdMomentum,
    names: &[String],
    state: &HashMap<String, Tensor>,
) -> Result<(), TrainError> {
    let bufs = names
        .iter()
        .map(|n| state.get(&format!("momentum.{n}")).cloned())
        .collect();
    opt.set_buffers(bufs).map_err(TrainError::from)
}

/// u32 labels as a tensor for a checkpoint, and back.
pub fn labels_to_tensor(labels: &[u32]) -> Result<Tensor, TrainError> {
    Ok(Tensor::from_slice(labels, labels.len(), &Device::Cpu)?)
}

pub fn tensor_to_labels(t: &Tensor) -> Result<Vec<u32>, TrainError> {
    Ok(t.to_dtype(DType::U32)?.to_vec1()?)
}
