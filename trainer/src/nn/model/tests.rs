//! The networks' tests: gradients against finite differences, batch normalisation (per rank and
//! synchronised), dropout, and results independent of the thread count.

use super::*;

fn spec(kind: ModelKind, hidden: Option<Vec<i32>>, dropout: Option<f64>) -> ModelSpec {
    ModelSpec {
        kind,
        hidden,
        dropout,
        batch_norm: None,
        sync_batch_norm: None,
    }
}

/// Central differences against the analytic gradient on a few coordinates of every layer.
fn check_gradients(net: &Network, inputs: usize, batch: usize) {
    let params = net.init_params(3);
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..batch * inputs).map(|_| rng.next_f32()).collect();
    let labels: Vec<u8> = (0..batch).map(|i| (i % net.classes) as u8).collect();
    let mut grads = vec![0.0; net.num_params];
    let mut ws = Workspace::default();
    net.train_step(&params, &mut grads, &x, &labels, &mut Rng::new(1), &mut ws);
    let loss_at = |p: &[f32], ws: &mut Workspace| {
        let mut g = vec![0.0; net.num_params];
        let s = net.train_step(p, &mut g, &x, &labels, &mut Rng::new(1), ws);
        s.loss_sum / batch as f64
    };
    // The running statistics after the trained parameters have no gradient.
    let stride = (net.trainable / 60).max(1);
    let norm_params = net
        .parameter_layers()
        .into_iter()
        .filter_map(|l| l.normalisation);
    let coordinates = (0..net.trainable)
        .step_by(stride)
        .chain(norm_params.flat_map(|n| [n.scale.start, n.shift.end - 1]));
    // A step of 1e-3 crosses ReLU and pooling kinks where batch normalisation couples every
    // position of a channel, one of 1e-4 meets f32 rounding: either may agree.
    for i in coordinates {
        let analytic = f64::from(grads[i]);
        let numeric: Vec<f64> = [1e-3_f32, 3e-4, 1e-4]
            .into_iter()
            .map(|eps| {
                let mut plus = params.clone();
                plus[i] += eps;
                let mut minus = params.clone();
                minus[i] -= eps;
                (loss_at(&plus, &mut ws) - loss_at(&minus, &mut ws)) / (2.0 * f64::from(eps))
            })
            .collect();
        assert!(
            numeric
                .iter()
                .any(|n| (n - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs()),
            "param {i}: numeric {numeric:?} analytic {analytic}"
        );
    }
}

#[test]
fn logistic_gradients_match_finite_differences() {
    let net = Network::new(&spec(ModelKind::Logistic, None, None), 12, 3).expect("builds");
    assert_eq!(net.num_params, 12 * 3 + 3);
    check_gradients(&net, 12, 5);
}

#[test]
fn mlp_gradients_match_finite_differences() {
    let net = Network::new(&spec(ModelKind::Mlp, Some(vec![16, 8]), None), 10, 4).expect("builds");
    check_gradients(&net, 10, 6);
}

#[test]
fn lenet_gradients_match_finite_differences() {
    let net = Network::new(&spec(ModelKind::Lenet, None, None), 784, 10).expect("builds");
    assert_eq!(net.num_params, 156 + 2416 + 48120 + 10164 + 850);
    check_gradients(&net, 784, 2);
}

/// Gradients and a few steps on pools of 1, 2 and 3 threads are bit-for-bit equal (the
/// optimisers update element by element, so plain steps stand for them here).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let models = [
        (spec(ModelKind::Mlp, Some(vec![256, 128]), Some(0.1)), 784),
        (spec(ModelKind::Lenet, None, None), 784),
        (normalised(ModelKind::Lenet, None), 784),
    ];
    for (model, inputs) in models {
        let net = Network::new(&model, inputs, 10).expect("builds");
        let mut rng = Rng::new(5);
        let batch = 64;
        let x: Vec<f32> = (0..batch * inputs).map(|_| rng.next_f32()).collect();
        let labels: Vec<u8> = (0..batch).map(|i| (i % 10) as u8).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            pool.install(|| {
                let mut params = net.init_params(7);
                let mut grads = vec![0.0; net.num_params];
                let mut ws = Workspace::default();
                for step in 0..3 {
                    let mut dropout = Rng::new(step);
                    net.train_step(&params, &mut grads, &x, &labels, &mut dropout, &mut ws);
                    let trained = params[..net.trainable].iter_mut().zip(&grads);
                    trained.for_each(|(p, g)| *p -= 1e-3 * g);
                    net.update_running_statistics(&mut params, &grads);
                }
                (params, grads)
            })
        };
        let one = run(1);
        assert_eq!(run(2), one, "{:?} on 2 threads", model.kind);
        assert_eq!(run(3), one, "{:?} on 3 threads", model.kind);
    }
}

#[test]
fn dropout_masks_follow_the_rng_and_vanish_in_evaluation() {
    let net = Network::new(&spec(ModelKind::Mlp, Some(vec![32]), Some(0.5)), 8, 2).expect("builds");
    let params = net.init_params(1);
    let x = vec![0.5; 4 * 8];
    let labels = [0, 1, 0, 1];
    let mut ws = Workspace::default();
    let mut g1 = vec![0.0; net.num_params];
    let mut g2 = vec![0.0; net.num_params];
    let a = net.train_step(&params, &mut g1, &x, &labels, &mut Rng::new(5), &mut ws);
    let b = net.train_step(&params, &mut g2, &x, &labels, &mut Rng::new(5), &mut ws);
    assert_eq!(a, b);
    assert_eq!(g1, g2);
    let c = net.train_step(&params, &mut g2, &x, &labels, &mut Rng::new(6), &mut ws);
    assert_ne!(a.loss_sum, c.loss_sum);
    let e1 = net.evaluate(&params, &x, &labels, &mut ws);
    let e2 = net.evaluate(&params, &x, &labels, &mut ws);
    assert_eq!(e1, e2);
}

fn normalised(kind: ModelKind, hidden: Option<Vec<i32>>) -> ModelSpec {
    ModelSpec {
        batch_norm: Some(true),
        ..spec(kind, hidden, None)
    }
}

#[test]
fn batch_normalised_gradients_match_finite_differences() {
    let mlp = Network::new(&normalised(ModelKind::Mlp, Some(vec![16, 8])), 10, 4).expect("mlp");
    assert_eq!(
        mlp.trainable,
        10 * 16 + 16 + 32 + 16 * 8 + 8 + 16 + 8 * 4 + 4
    );
    assert_eq!(mlp.num_params, mlp.trainable + 2 * (16 + 8));
    check_gradients(&mlp, 10, 6);
    let lenet = Network::new(&normalised(ModelKind::Lenet, None), 784, 10).expect("lenet");
    assert_eq!(lenet.num_params - lenet.trainable, 2 * (6 + 16 + 120 + 84));
    check_gradients(&lenet, 784, 3);
}

/// Training normalises with the batch, evaluation with the running statistics, which the
/// step's batch statistics (after the gradients) move by the momentum.
#[test]
fn running_statistics_follow_the_batches_and_serve_evaluation() {
    let net = Network::new(&normalised(ModelKind::Mlp, Some(vec![8])), 4, 2).expect("builds");
    let mut params = net.init_params(2);
    let mut rng = Rng::new(4);
    let x: Vec<f32> = (0..16 * 4).map(|_| rng.next_f32() * 3.0 + 1.0).collect();
    let labels: Vec<u8> = (0..16).map(|i| (i % 2) as u8).collect();
    let mut ws = Workspace::default();
    let mut grads = vec![0.0; net.num_params];
    let before = net.evaluate(&params, &x, &labels, &mut ws);
    for _ in 0..200 {
        net.train_step(&params, &mut grads, &x, &labels, &mut Rng::new(1), &mut ws);
        net.update_running_statistics(&mut params, &grads);
    }
    let Some(Layer::BatchNorm { mean, var, .. }) = net.layers.get(1).cloned() else {
        panic!("the hidden layer is normalised: {:?}", net.layers);
    };
    // The same batch every step: the running statistics converge to its own.
    for c in 0..8 {
        assert!((params[mean + c] - grads[mean + c]).abs() < 1e-4);
        assert!((params[var + c] - grads[var + c]).abs() < 1e-4);
    }
    let after = net.evaluate(&params, &x, &labels, &mut ws);
    assert_ne!(before, after, "evaluation reads the running statistics");
}

/// Two ranks of 4 rows with their sums all-reduced compute what one rank of all 8 rows
/// computes: the same loss, and gradients whose average is the single rank's.
#[test]
fn synchronised_batch_norm_over_two_ranks_equals_one_rank_with_the_whole_batch() {
    use std::sync::{Arc, Barrier, Mutex};
    let net = Network::new(&normalised(ModelKind::Lenet, None), 784, 10).expect("builds");
    let params = net.init_params(5);
    let mut rng = Rng::new(3);
    let x: Vec<f32> = (0..8 * 784).map(|_| rng.next_f32()).collect();
    let labels: Vec<u8> = (0..8).map(|i| (i % 10) as u8).collect();
    let mut whole = vec![0.0; net.num_params];
    let mut ws = Workspace::default();
    let stats = net.train_step(&params, &mut whole, &x, &labels, &mut Rng::new(1), &mut ws);
    let barrier = Arc::new(Barrier::new(2));
    let shared: Arc<Mutex<Vec<f32>>> = Arc::default();
    let halves: Vec<(Vec<f32>, BatchStats)> = std::thread::scope(|scope| {
        let ranks: Vec<_> = (0..2)
            .map(|rank| {
                let (net, params, barrier, shared) = (&net, &params, &barrier, &shared);
                let (x, labels) = (&x[rank * 4 * 784..][..4 * 784], &labels[rank * 4..][..4]);
                scope.spawn(move || {
                    let mut reduce = |values: &mut [f32]| {
                        if barrier.wait().is_leader() {
                            shared.lock().expect("lock").clear();
                        }
                        barrier.wait();
                        {
                            let mut sum = shared.lock().expect("lock");
                            sum.resize(values.len(), 0.0);
                            sum.iter_mut().zip(values.iter()).for_each(|(s, v)| *s += v);
                        }
                        barrier.wait();
                        values.copy_from_slice(&shared.lock().expect("lock"));
                    };
                    let mut grads = vec![0.0; net.num_params];
                    let mut ws = Workspace::default();
                    let targets = Targets::Labels(labels);
                    let stats = net.train_step_reduced(
                        params,
                        &mut grads,
                        x,
                        targets,
                        &mut Rng::new(1),
                        &mut ws,
                        &mut reduce,
                    );
                    (grads, stats)
                })
            })
            .collect();
        ranks.into_iter().map(|r| r.join().expect("rank")).collect()
    });
    let loss = (halves[0].1.loss_sum + halves[1].1.loss_sum) / 8.0;
    assert!(
        (loss - stats.loss_sum / 8.0).abs() < 1e-5,
        "{loss} {stats:?}"
    );
    let (first, second) = (&halves[0].0, &halves[1].0);
    for (i, one) in whole[..net.trainable].iter().enumerate() {
        let average = (first[i] + second[i]) / 2.0;
        assert!(
            (average - one).abs() <= 1e-5 + 1e-3 * one.abs(),
            "parameter {i}: two ranks {average}, one rank {one}"
        );
    }
    // Each rank's batch statistics are the whole batch's.
    for (grads, _) in &halves {
        let pairs = grads[net.trainable..].iter().zip(&whole[net.trainable..]);
        for (i, (rank, one)) in pairs.enumerate() {
            assert!((rank - one).abs() < 1e-4, "statistic {i}");
        }
    }
}

#[test]
fn lenet_refuses_other_input_sizes() {
    assert_eq!(
        Network::new(&spec(ModelKind::Lenet, None, None), 54, 7),
        Err(ModelError::LenetInput(54))
    );
    assert_eq!(
        Network::new(&spec(ModelKind::Mlp, None, None), 4, 1),
        Err(ModelError::Classes(1))
    );
}
