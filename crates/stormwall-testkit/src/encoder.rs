//! A tiny sentence-encoder model directory for tests of the paths that load one
//! (`[safety] encoder_dir`, `--encoder-dir`): the real model is 90 MB and fetched from a
//! registry, which tests cannot count on.

use std::path::Path;

/// Width of the tiny model's vectors and embeddings: all-MiniLM-L6-v2's, so the shipped
/// cascade heads accept them.
pub const TINY_ENCODER_DIM: usize = 384;

/// Writes `config.json`, `tokenizer.json` and `model.safetensors` of a BERT with one layer,
/// [`TINY_ENCODER_DIM`]-wide vectors and a four-entry WordPiece vocabulary (`[UNK]`,
/// `[CLS]`, `[SEP]`, `cat`) into `dir` (3.6 MB). Its weights are fixed and meaningless; it
/// loads in milliseconds in either precision, and its embeddings are unit vectors like any
/// model's.
pub fn write_tiny_encoder(dir: &Path) -> std::io::Result<()> {
    let (h, vocab, positions) = (TINY_ENCODER_DIM, 4usize, 8usize);
    let config = serde_json::json!({
        "hidden_size": h, "num_hidden_layers": 1, "num_attention_heads": 1,
        "intermediate_size": h, "max_position_embeddings": positions,
        "vocab_size": vocab, "type_vocab_size": 2, "hidden_act": "gelu",
    });
    let tokenizer = serde_json::json!({
        "normalizer": {"type": "BertNormalizer", "lowercase": true},
        "model": {"type": "WordPiece",
                  "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "cat": 3}},
    });
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("embeddings.word_embeddings.weight".into(), vec![vocab, h]),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![positions, h],
        ),
        ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
    ];
    let layer = "encoder.layer.0";
    for linear in [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ] {
        tensors.push((format!("{layer}.{linear}.weight"), vec![h, h]));
        tensors.push((format!("{layer}.{linear}.bias"), vec![h]));
    }
    for norm in [
        "embeddings.LayerNorm".to_owned(),
        format!("{layer}.attention.output.LayerNorm"),
        format!("{layer}.output.LayerNorm"),
    ] {
        tensors.push((format!("{norm}.weight"), vec![h]));
        tensors.push((format!("{norm}.bias"), vec![h]));
    }
    // safetensors: the header's length (u64, little-endian), the JSON header naming each
    // tensor's dtype, shape and byte range, then the data.
    let (mut header, mut data) = (serde_json::Map::new(), Vec::<u8>::new());
    for (name, shape) in tensors {
        let start = data.len();
        for i in 0..shape.iter().product::<usize>() {
            // Fixed values spread over −0.5..0.5, different for every weight.
            let v = ((start / 4 + i) * 7919 % 17) as f32 / 17.0 - 0.5;
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name,
            serde_json::json!({"dtype": "F32", "shape": shape,
                               "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), file)?;
    std::fs::write(dir.join("config.json"), config.to_string())?;
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string())
}
