//! The checks of `spec.inference`: one model source, the anomaly task's window,
//! normalisation and golden vectors, the classification task's input and labels, and the
//! task that matches the payload encoding.

use super::Validator;
use crate::spec::{Inference, InferenceTask, PayloadEncoding};

impl Validator {
    pub(super) fn inference(&mut self, inf: &Inference, encoding: PayloadEncoding) {
        let m = &inf.model;
        let sources = [m.path.is_some(), m.config_map.is_some(), m.url.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if sources != 1 {
            self.err(
                "spec.inference.model",
                "exactly one of path, configMap or url must be set",
            );
        }
        if let Some(url) = &m.url {
            self.url("spec.inference.model.url", url, &["http", "https"]);
            if m.sha256.is_none() {
                self.err("spec.inference.model.sha256", "required with url");
            }
        }
        if let Some(sha) = &m.sha256 {
            if m.url.is_none() {
                self.err("spec.inference.model.sha256", "only used with url");
            }
            if sha.len() != 64
                || !sha
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                self.err(
                    "spec.inference.model.sha256",
                    "must be 64 lowercase hex characters",
                );
            }
        }
        if let Some(cm) = &m.config_map
            && (cm.name.is_empty() || cm.key.is_empty())
        {
            self.err(
                "spec.inference.model.configMap",
                "name and key are required",
            );
        }
        if !m.headers.is_empty() && m.url.is_none() {
            self.err("spec.inference.model.headers", "only used with url");
        }
        self.headers("spec.inference.model.headers", &m.headers);
        if let Some(file) = inf.golden.as_ref().and_then(|g| g.file.as_deref()) {
            self.file_next_to_model("spec.inference.golden.file", file);
        }
        if let Some(file) = &inf.labels_file {
            self.file_next_to_model("spec.inference.labelsFile", file);
        }
        if inf.window == 0 {
            self.err("spec.inference.window", "must be > 0");
        }
        self.finite("spec.inference.threshold", inf.threshold);
        if let Some(n) = &inf.normalize {
            let mean_std = n.mean.is_some() && n.std.is_some();
            let min_max = n.min.is_some() && n.max.is_some();
            if mean_std == min_max
                || (mean_std && (n.min.is_some() || n.max.is_some()))
                || (min_max && (n.mean.is_some() || n.std.is_some()))
            {
                self.err(
                    "spec.inference.normalize",
                    "set either mean and std, or min and max",
                );
            }
            if let Some(mean) = n.mean {
                self.finite("spec.inference.normalize.mean", mean);
            }
            if let Some(std) = n.std {
                self.positive("spec.inference.normalize.std", std);
            }
            let min_ok = n
                .min
                .is_none_or(|x| self.finite("spec.inference.normalize.min", x));
            let max_ok = n
                .max
                .is_none_or(|x| self.finite("spec.inference.normalize.max", x));
            if let (Some(min), Some(max)) = (n.min, n.max)
                && min_ok
                && max_ok
                && max <= min
            {
                self.err("spec.inference.normalize.max", "must be > min");
            }
        }
        if let Some(g) = &inf.golden {
            if g.file.is_none() && g.vectors.is_empty() {
                self.err("spec.inference.golden", "set file or vectors");
            }
            self.positive("spec.inference.golden.tolerance", g.tolerance);
            for (i, vec) in g.vectors.iter().enumerate() {
                if vec.input.is_empty() || vec.output.is_empty() {
                    self.err(
                        format!("spec.inference.golden.vectors[{i}]"),
                        "input and output must not be empty",
                    );
                }
            }
        }
        if inf.top_k == 0 {
            self.err("spec.inference.topK", "must be > 0");
        }
        if let Some(input) = &inf.input {
            if inf.task != InferenceTask::Classification {
                self.err(
                    "spec.inference.input",
                    "only for task: classification (readings use normalize)",
                );
            }
            for (field, values) in [("mean", &input.mean), ("std", &input.std)] {
                let path = format!("spec.inference.input.{field}");
                if !matches!(values.len(), 0 | 1 | 3) {
                    self.err(
                        &path,
                        "takes one value for every channel or three (R, G, B)",
                    );
                }
                let bad = values
                    .iter()
                    .find(|v| !v.is_finite() || (field == "std" && **v <= 0.0));
                if let Some(v) = bad {
                    let rule = if field == "std" { "> 0" } else { "finite" };
                    self.err(&path, format!("{v} is not {rule}"));
                }
            }
        }
        self.duration("spec.inference.timeout", &inf.timeout, true);
        match (inf.task, encoding) {
            (InferenceTask::Classification, PayloadEncoding::Json) => self.err(
                "spec.inference.task",
                "classification needs spec.source.format.encoding: image",
            ),
            (InferenceTask::Anomaly, PayloadEncoding::Image) => self.err(
                "spec.inference.task",
                "image payloads need task: classification",
            ),
            _ => {}
        }
    }
}
