//! Poses as deterministic functions of time: the head, the eyes and the hands, in STAGE
//! space, plus the little quaternion algebra spaces need. Pure: no OpenXR types.

use crate::control::Script;

/// A rigid transform: rotate by `orientation` (`[x, y, z, w]`), then move by `position`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pose {
    pub(crate) orientation: [f32; 4],
    pub(crate) position: [f32; 3],
}

impl Pose {
    pub(crate) const IDENTITY: Pose = Pose {
        orientation: [0.0, 0.0, 0.0, 1.0],
        position: [0.0, 0.0, 0.0],
    };

    /// `self ∘ inner`: a pose given relative to `self`, expressed in `self`'s parent.
    pub(crate) fn compose(&self, inner: &Pose) -> Pose {
        let p = rotate(self.orientation, inner.position);
        Pose {
            orientation: normalize(mul(self.orientation, inner.orientation)),
            position: [
                p[0] + self.position[0],
                p[1] + self.position[1],
                p[2] + self.position[2],
            ],
        }
    }

    pub(crate) fn inverse(&self) -> Pose {
        let q = conjugate(self.orientation);
        let p = rotate(q, self.position);
        Pose {
            orientation: q,
            position: [-p[0], -p[1], -p[2]],
        }
    }

    /// The exact bits of the seven floats: how `frames.log` recognises a located pose.
    pub(crate) fn bits(&self) -> [u32; 7] {
        let [a, b, c, d] = self.orientation;
        let [x, y, z] = self.position;
        [a, b, c, d, x, y, z].map(f32::to_bits)
    }
}

fn mul(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    let [ax, ay, az, aw] = a;
    let [bx, by, bz, bw] = b;
    [
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ]
}

fn conjugate(q: [f32; 4]) -> [f32; 4] {
    [-q[0], -q[1], -q[2], q[3]]
}

fn normalize(q: [f32; 4]) -> [f32; 4] {
    let n = q.iter().map(|c| c * c).sum::<f32>().sqrt();
    if n > 0.0 {
        q.map(|c| c / n)
    } else {
        Pose::IDENTITY.orientation
    }
}

/// Rotates vector `v` by unit quaternion `q`.
pub(crate) fn rotate(q: [f32; 4], v: [f32; 3]) -> [f32; 3] {
    let r = mul(mul(q, [v[0], v[1], v[2], 0.0]), conjugate(q));
    [r[0], r[1], r[2]]
}

/// A rotation of `radians` about +Y (positive turns the view from −Z towards −X: left).
pub(crate) fn yaw(radians: f32) -> [f32; 4] {
    let (s, c) = (radians / 2.0).sin_cos();
    [0.0, s, 0.0, c]
}

/// The head at `t_s` seconds after the session began.
pub(crate) fn head(script: &Script, t_s: f64) -> Pose {
    let h = &script.head;
    let phase = if h.period_s > 0.0 {
        2.0 * std::f64::consts::PI * t_s / f64::from(h.period_s)
    } else {
        0.0
    };
    let angle = f64::from(h.yaw_amplitude_deg).to_radians() * phase.sin();
    Pose {
        orientation: yaw(angle as f32),
        position: h.position,
    }
}

/// The two eyes (left, right) of `head`: ∓ipd/2 along the head's right axis.
pub(crate) fn eyes(script: &Script, head: &Pose) -> [Pose; 2] {
    let half = script.ipd_m / 2.0;
    [-half, half].map(|dx| {
        head.compose(&Pose {
            orientation: Pose::IDENTITY.orientation,
            position: [dx, 0.0, 0.0],
        })
    })
}

/// Which hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Hand {
    Left,
    Right,
}

/// A hand's grip (and aim) pose: a fixed offset from the head, turning with it.
pub(crate) fn hand(head: &Pose, hand: Hand) -> Pose {
    let x = match hand {
        Hand::Left => -0.2,
        Hand::Right => 0.2,
    };
    head.compose(&Pose {
        orientation: Pose::IDENTITY.orientation,
        position: [x, -0.3, -0.35],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5)
    }

    #[test]
    fn the_head_starts_level_and_peaks_at_a_quarter_period() {
        let s = Script::default();
        assert!(close(&head(&s, 0.0).orientation, &[0.0, 0.0, 0.0, 1.0]));
        assert!(close(&head(&s, 0.0).position, &[0.0, 1.6, 0.0]));
        let peak = head(&s, 1.0).orientation;
        assert!(close(&peak, &yaw(10f32.to_radians())));
        assert!(close(&head(&s, 3.0).orientation, &yaw(-10f32.to_radians())));
    }

    #[test]
    fn the_eyes_are_an_ipd_apart_along_the_heads_right_axis() {
        let s = Script::default();
        let h = head(&s, 0.0);
        let [l, r] = eyes(&s, &h);
        assert!(close(&l.position, &[-0.032, 1.6, 0.0]));
        assert!(close(&r.position, &[0.032, 1.6, 0.0]));
        assert_eq!(l.orientation, h.orientation);
        // Turned 90° left, the right axis points along −Z, so the left eye sits at +Z.
        let turned = Pose {
            orientation: yaw(std::f32::consts::FRAC_PI_2),
            position: [0.0; 3],
        };
        let [l, _] = eyes(&s, &turned);
        assert!(close(&l.position, &[0.0, 0.0, 0.032]));
    }

    #[test]
    fn a_pose_composed_with_its_inverse_is_the_identity() {
        let p = Pose {
            orientation: yaw(0.7),
            position: [1.0, 2.0, 3.0],
        };
        let id = p.compose(&p.inverse());
        assert!(close(&id.orientation, &Pose::IDENTITY.orientation));
        assert!(close(&id.position, &[0.0; 3]));
    }

    #[test]
    fn the_hands_sit_below_and_in_front_of_the_head() {
        let h = head(&Script::default(), 0.0);
        assert!(close(&hand(&h, Hand::Left).position, &[-0.2, 1.3, -0.35]));
        assert!(close(&hand(&h, Hand::Right).position, &[0.2, 1.3, -0.35]));
    }
}
