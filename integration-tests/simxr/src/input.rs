//! Action entry points: action sets and actions, suggested bindings, attaching, syncing
//! (which applies new `inputs.jsonl` lines), action state, and haptics.

use std::ffi::c_char;

use openxr_sys::{self as sys, Handle as _};

use crate::abi::{
    XrResult, array, fixed_str, guard, input, out, output, two_call_copy, two_call_str,
};
use crate::actions::{
    self, ActionValue, Kind, binding_supported, hand_path, well_formed_name, well_formed_path,
};
use crate::control::HapticRecord;
use crate::pacing::now_ns;
use crate::poses::Hand;
use crate::state::{Action, ActionSet, Event, Instance, lock};

/// The hand named by a subaction path: `None` for `XR_NULL_PATH`; a path the action was
/// not created with is `XR_ERROR_PATH_UNSUPPORTED`.
pub(crate) fn subaction_hand(
    inst: &Instance,
    action: &Action,
    path: sys::Path,
) -> XrResult<Option<Hand>> {
    if path == sys::Path::NULL {
        return Ok(None);
    }
    let s = inst
        .paths
        .get(path.into_raw())
        .ok_or(sys::Result::ERROR_PATH_INVALID)?;
    action
        .hands
        .iter()
        .copied()
        .find(|&h| hand_path(h) == s)
        .map(Some)
        .ok_or(sys::Result::ERROR_PATH_UNSUPPORTED)
}

fn kind_of(ty: sys::ActionType) -> XrResult<Kind> {
    Ok(match ty {
        sys::ActionType::BOOLEAN_INPUT => Kind::Boolean,
        sys::ActionType::FLOAT_INPUT => Kind::Float,
        sys::ActionType::VECTOR2F_INPUT => Kind::Vector2,
        sys::ActionType::POSE_INPUT => Kind::Pose,
        sys::ActionType::VIBRATION_OUTPUT => Kind::Vibration,
        _ => return Err(sys::Result::ERROR_VALIDATION_FAILURE),
    })
}

fn check_names(name: &str, localized: &str) -> XrResult {
    if !well_formed_name(name) {
        return Err(sys::Result::ERROR_PATH_FORMAT_INVALID);
    }
    if localized.is_empty() {
        return Err(sys::Result::ERROR_LOCALIZED_NAME_INVALID);
    }
    Ok(())
}

pub(crate) unsafe extern "system" fn create_action_set(
    instance: sys::Instance,
    info: *const sys::ActionSetCreateInfo,
    handle: *mut sys::ActionSet,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, handle) = unsafe { (input(info)?, out(handle)?) };
        let name = fixed_str(&info.action_set_name)?;
        check_names(name, fixed_str(&info.localized_action_set_name)?)?;
        let mut rt = lock();
        let id = rt.new_handle();
        let inst = rt.instance(instance)?;
        if inst.action_sets.values().any(|s| s.name == name) {
            return Err(sys::Result::ERROR_NAME_DUPLICATED);
        }
        inst.action_sets.insert(
            id,
            ActionSet {
                name: name.to_owned(),
                attached: false,
            },
        );
        *handle = sys::ActionSet::from_raw(id);
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn destroy_action_set(set: sys::ActionSet) -> sys::Result {
    guard(|| {
        let mut rt = lock();
        let inst = rt
            .instance
            .as_mut()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        inst.action_sets
            .remove(&set.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        inst.actions.retain(|_, a| a.set != set.into_raw());
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn create_action(
    set: sys::ActionSet,
    info: *const sys::ActionCreateInfo,
    handle: *mut sys::Action,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked).
        let (info, handle) = unsafe { (input(info)?, out(handle)?) };
        let name = fixed_str(&info.action_name)?;
        check_names(name, fixed_str(&info.localized_action_name)?)?;
        let kind = kind_of(info.action_type)?;
        // SAFETY: `subaction_paths` holds `count_subaction_paths` paths (valid usage).
        let subactions = unsafe { array(info.subaction_paths, info.count_subaction_paths)? };
        let mut rt = lock();
        let id = rt.new_handle();
        let inst = rt
            .instance
            .as_mut()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        let owner = inst
            .action_sets
            .get(&set.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        if owner.attached {
            return Err(sys::Result::ERROR_ACTIONSETS_ALREADY_ATTACHED);
        }
        if inst
            .actions
            .values()
            .any(|a| a.set == set.into_raw() && a.name == name)
        {
            return Err(sys::Result::ERROR_NAME_DUPLICATED);
        }
        let mut hands = Vec::new();
        for path in subactions {
            let s = inst
                .paths
                .get(path.into_raw())
                .ok_or(sys::Result::ERROR_PATH_INVALID)?;
            let hand = [Hand::Left, Hand::Right]
                .into_iter()
                .find(|&h| hand_path(h) == s);
            match hand {
                Some(h) if !hands.contains(&h) => hands.push(h),
                _ => return Err(sys::Result::ERROR_PATH_UNSUPPORTED),
            }
        }
        inst.actions.insert(
            id,
            Action {
                set: set.into_raw(),
                name: name.to_owned(),
                kind,
                hands,
            },
        );
        *handle = sys::Action::from_raw(id);
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn destroy_action(action: sys::Action) -> sys::Result {
    guard(|| {
        let mut rt = lock();
        let inst = rt
            .instance
            .as_mut()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        inst.actions
            .remove(&action.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn suggest_bindings(
    instance: sys::Instance,
    info: *const sys::InteractionProfileSuggestedBinding,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let info = unsafe { input(info)? };
        // SAFETY: `suggested_bindings` holds `count_suggested_bindings` entries (valid usage).
        let list = unsafe { array(info.suggested_bindings, info.count_suggested_bindings)? };
        let mut rt = lock();
        let inst = rt.instance(instance)?;
        if inst.session.as_ref().is_some_and(|s| s.attached) {
            return Err(sys::Result::ERROR_ACTIONSETS_ALREADY_ATTACHED);
        }
        let name = inst
            .paths
            .get(info.interaction_profile.into_raw())
            .ok_or(sys::Result::ERROR_PATH_INVALID)?;
        let profile = actions::profile(name).ok_or(sys::Result::ERROR_PATH_UNSUPPORTED)?;
        if list.is_empty() {
            return Err(sys::Result::ERROR_VALIDATION_FAILURE);
        }
        let mut bindings = Vec::with_capacity(list.len());
        for b in list {
            if !inst.actions.contains_key(&b.action.into_raw()) {
                return Err(sys::Result::ERROR_HANDLE_INVALID);
            }
            let path = inst
                .paths
                .get(b.binding.into_raw())
                .ok_or(sys::Result::ERROR_PATH_INVALID)?;
            if !binding_supported(profile, path) {
                return Err(sys::Result::ERROR_PATH_UNSUPPORTED);
            }
            bindings.push((b.action.into_raw(), path.to_owned()));
        }
        inst.suggested.0.insert(profile, bindings);
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn attach_action_sets(
    session: sys::Session,
    info: *const sys::SessionActionSetsAttachInfo,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let info = unsafe { input(info)? };
        // SAFETY: `action_sets` holds `count_action_sets` handles (valid usage).
        let sets = unsafe { array(info.action_sets, info.count_action_sets)? };
        let mut rt = lock();
        let inst = rt.instance_of(session)?;
        let profile = actions::PROFILES
            .into_iter()
            .find(|p| inst.suggested.0.contains_key(p));
        let s = inst
            .session
            .as_mut()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        if s.attached {
            return Err(sys::Result::ERROR_ACTIONSETS_ALREADY_ATTACHED);
        }
        if sets.is_empty()
            || sets
                .iter()
                .any(|h| !inst.action_sets.contains_key(&h.into_raw()))
        {
            return Err(sys::Result::ERROR_HANDLE_INVALID);
        }
        for h in sets {
            if let Some(set) = inst.action_sets.get_mut(&h.into_raw()) {
                set.attached = true;
            }
        }
        s.attached = true;
        s.profile = profile;
        inst.events.push_back(Event::ProfileChanged {
            session: session.into_raw(),
        });
        rt.mark_status_dirty();
        rt.sync_status(now_ns(), false);
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn get_current_interaction_profile(
    session: sys::Session,
    top_level: sys::Path,
    state: *mut sys::InteractionProfileState,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let state = unsafe { output(state)? };
        let mut rt = lock();
        let inst = rt.instance_of(session)?;
        let (attached, profile) = inst
            .session
            .as_ref()
            .map(|s| (s.attached, s.profile))
            .unwrap_or_default();
        if !attached {
            return Err(sys::Result::ERROR_ACTIONSET_NOT_ATTACHED);
        }
        let top = inst
            .paths
            .get(top_level.into_raw())
            .ok_or(sys::Result::ERROR_PATH_INVALID)?;
        let profile = match top {
            actions::LEFT | actions::RIGHT => profile,
            "/user/head" | "/user/gamepad" => None,
            _ => return Err(sys::Result::ERROR_PATH_UNSUPPORTED),
        };
        let id = match profile {
            Some(p) => inst
                .paths
                .intern(p)
                .ok_or(sys::Result::ERROR_RUNTIME_FAILURE)?,
            None => 0,
        };
        state.interaction_profile = sys::Path::from_raw(id);
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn sync_actions(
    session: sys::Session,
    info: *const sys::ActionsSyncInfo,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let info = unsafe { input(info)? };
        // SAFETY: `active_action_sets` holds `count_active_action_sets` entries (valid usage).
        let active = unsafe { array(info.active_action_sets, info.count_active_action_sets)? };
        let mut rt = lock();
        let inst = rt.instance_of(session)?;
        for a in active {
            let set = inst
                .action_sets
                .get(&a.action_set.into_raw())
                .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
            if !set.attached {
                return Err(sys::Result::ERROR_ACTIONSET_NOT_ATTACHED);
            }
            if a.subaction_path != sys::Path::NULL {
                let path = inst
                    .paths
                    .get(a.subaction_path.into_raw())
                    .ok_or(sys::Result::ERROR_PATH_INVALID)?;
                if actions::hand_of(path).is_none_or(|h| hand_path(h) != path) {
                    return Err(sys::Result::ERROR_PATH_UNSUPPORTED);
                }
            }
        }
        let applied = inst.apply_inputs();
        let s = inst
            .session
            .as_mut()
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        s.check_not_lost()?;
        let focused = s.state == sys::SessionState::FOCUSED;
        let now = now_ns();
        for (&id, action) in &inst.actions {
            if !active.iter().any(|a| a.action_set.into_raw() == action.set) {
                continue;
            }
            let keys = std::iter::once(None).chain(action.hands.iter().copied().map(Some));
            for key in keys {
                let resolved = focused
                    .then(|| {
                        inst.inputs
                            .resolve(action.kind, inst.suggested.of(s.profile, id, key))
                    })
                    .flatten();
                s.values.entry((id, key)).or_default().sync(resolved, now);
            }
        }
        rt.stats.inputs_applied += applied;
        if applied > 0 {
            rt.mark_status_dirty();
        }
        rt.sync_status(now, false);
        Ok(if focused {
            sys::Result::SUCCESS
        } else {
            sys::Result::SESSION_NOT_FOCUSED
        })
    })
}

/// The synced state of the action `info` names, checked against `kind`.
fn action_state(
    session: sys::Session,
    info: *const sys::ActionStateGetInfo,
    kind: Kind,
) -> XrResult<ActionValue> {
    // SAFETY: the caller passes a valid pointer or null (checked).
    let info = unsafe { input(info)? };
    let mut rt = lock();
    let inst = rt.instance_of(session)?;
    let action = inst
        .actions
        .get(&info.action.into_raw())
        .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
    if !inst
        .action_sets
        .get(&action.set)
        .is_some_and(|s| s.attached)
    {
        return Err(sys::Result::ERROR_ACTIONSET_NOT_ATTACHED);
    }
    if action.kind != kind {
        return Err(sys::Result::ERROR_ACTION_TYPE_MISMATCH);
    }
    let hand = subaction_hand(inst, action, info.subaction_path)?;
    let s = inst
        .session
        .as_ref()
        .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
    if kind == Kind::Pose {
        // A pose is active while it is bound and the session has focus.
        let bound = inst
            .suggested
            .of(s.profile, info.action.into_raw(), hand)
            .next()
            .is_some();
        let active = bound && s.state == sys::SessionState::FOCUSED;
        return Ok(ActionValue {
            active,
            ..ActionValue::default()
        });
    }
    Ok(s.values
        .get(&(info.action.into_raw(), hand))
        .copied()
        .unwrap_or_default())
}

pub(crate) unsafe extern "system" fn get_boolean(
    session: sys::Session,
    info: *const sys::ActionStateGetInfo,
    state: *mut sys::ActionStateBoolean,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let state = unsafe { output(state)? };
        let v = action_state(session, info, Kind::Boolean)?;
        state.current_state = (v.value[0] > 0.5).into();
        state.changed_since_last_sync = v.changed.into();
        state.last_change_time = sys::Time::from_nanos(v.last_change_ns);
        state.is_active = v.active.into();
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn get_float(
    session: sys::Session,
    info: *const sys::ActionStateGetInfo,
    state: *mut sys::ActionStateFloat,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let state = unsafe { output(state)? };
        let v = action_state(session, info, Kind::Float)?;
        state.current_state = v.value[0];
        state.changed_since_last_sync = v.changed.into();
        state.last_change_time = sys::Time::from_nanos(v.last_change_ns);
        state.is_active = v.active.into();
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn get_vector2f(
    session: sys::Session,
    info: *const sys::ActionStateGetInfo,
    state: *mut sys::ActionStateVector2f,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let state = unsafe { output(state)? };
        let v = action_state(session, info, Kind::Vector2)?;
        state.current_state = sys::Vector2f {
            x: v.value[0],
            y: v.value[1],
        };
        state.changed_since_last_sync = v.changed.into();
        state.last_change_time = sys::Time::from_nanos(v.last_change_ns);
        state.is_active = v.active.into();
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn get_pose(
    session: sys::Session,
    info: *const sys::ActionStateGetInfo,
    state: *mut sys::ActionStatePose,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let state = unsafe { output(state)? };
        state.is_active = action_state(session, info, Kind::Pose)?.active.into();
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn enumerate_bound_sources(
    session: sys::Session,
    info: *const sys::BoundSourcesForActionEnumerateInfo,
    capacity: u32,
    count: *mut u32,
    sources: *mut sys::Path,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let info = unsafe { input(info)? };
        let mut rt = lock();
        let inst = rt.instance_of(session)?;
        let action = inst
            .actions
            .get(&info.action.into_raw())
            .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
        if !inst
            .action_sets
            .get(&action.set)
            .is_some_and(|s| s.attached)
        {
            return Err(sys::Result::ERROR_ACTIONSET_NOT_ATTACHED);
        }
        let profile = inst.session.as_ref().and_then(|s| s.profile);
        let paths: Vec<String> = inst
            .suggested
            .of(profile, info.action.into_raw(), None)
            .map(str::to_owned)
            .collect();
        let ids: Vec<sys::Path> = paths
            .iter()
            .filter_map(|p| inst.paths.intern(p))
            .map(sys::Path::from_raw)
            .collect();
        // SAFETY: two-call pointers from the caller, valid or null (checked).
        unsafe { two_call_copy(capacity, count, sources, &ids)? };
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn get_input_source_localized_name(
    session: sys::Session,
    info: *const sys::InputSourceLocalizedNameGetInfo,
    capacity: u32,
    count: *mut u32,
    buffer: *mut c_char,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let info = unsafe { input(info)? };
        if info.which_components.is_empty() {
            return Err(sys::Result::ERROR_VALIDATION_FAILURE);
        }
        let mut rt = lock();
        let inst = rt.instance_of(session)?;
        let name = inst
            .paths
            .get(info.source_path.into_raw())
            .ok_or(sys::Result::ERROR_PATH_INVALID)?;
        if !well_formed_path(name) {
            return Err(sys::Result::ERROR_PATH_INVALID);
        }
        // SAFETY: two-call pointers from the caller, valid or null (checked).
        unsafe { two_call_str(capacity, count, buffer, name)? };
        Ok(sys::Result::SUCCESS)
    })
}

/// Checks a haptic action info; returns the hands it addresses.
fn haptic_target(
    session: sys::Session,
    info: &sys::HapticActionInfo,
) -> XrResult<(Vec<Hand>, bool)> {
    let mut rt = lock();
    let inst = rt.instance_of(session)?;
    let action = inst
        .actions
        .get(&info.action.into_raw())
        .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
    if !inst
        .action_sets
        .get(&action.set)
        .is_some_and(|s| s.attached)
    {
        return Err(sys::Result::ERROR_ACTIONSET_NOT_ATTACHED);
    }
    if action.kind != Kind::Vibration {
        return Err(sys::Result::ERROR_ACTION_TYPE_MISMATCH);
    }
    let hand = subaction_hand(inst, action, info.subaction_path)?;
    let s = inst
        .session
        .as_ref()
        .ok_or(sys::Result::ERROR_HANDLE_INVALID)?;
    s.check_not_lost()?;
    let hands = match hand {
        Some(h) => vec![h],
        None => {
            let bound: Vec<Hand> = [Hand::Left, Hand::Right]
                .into_iter()
                .filter(|&h| {
                    inst.suggested
                        .of(s.profile, info.action.into_raw(), Some(h))
                        .next()
                        .is_some()
                })
                .collect();
            if bound.is_empty() {
                action.hands.clone()
            } else {
                bound
            }
        }
    };
    Ok((hands, s.state == sys::SessionState::FOCUSED))
}

pub(crate) unsafe extern "system" fn apply_haptic_feedback(
    session: sys::Session,
    info: *const sys::HapticActionInfo,
    feedback: *const sys::HapticBaseHeader,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes valid pointers or null (checked); the header's type
        // says which structure it is.
        let (info, vibration) = unsafe {
            let info = input(info)?;
            let base = feedback
                .as_ref()
                .ok_or(sys::Result::ERROR_VALIDATION_FAILURE)?;
            if base.ty != sys::HapticVibration::TYPE {
                return Err(sys::Result::ERROR_VALIDATION_FAILURE);
            }
            (info, input(feedback.cast::<sys::HapticVibration>())?)
        };
        let (hands, focused) = haptic_target(session, info)?;
        if !focused {
            return Ok(sys::Result::SESSION_NOT_FOCUSED);
        }
        let mut rt = lock();
        for hand in hands {
            rt.stats.haptic(HapticRecord {
                path: hand_path(hand).to_owned(),
                amplitude: vibration.amplitude,
                duration_ns: vibration.duration.as_nanos(),
                frequency: vibration.frequency,
            });
        }
        rt.mark_status_dirty();
        rt.sync_status(now_ns(), false);
        Ok(sys::Result::SUCCESS)
    })
}

pub(crate) unsafe extern "system" fn stop_haptic_feedback(
    session: sys::Session,
    info: *const sys::HapticActionInfo,
) -> sys::Result {
    guard(|| {
        // SAFETY: the caller passes a valid pointer or null (checked).
        let info = unsafe { input(info)? };
        let (_, focused) = haptic_target(session, info)?;
        Ok(if focused {
            sys::Result::SUCCESS
        } else {
            sys::Result::SESSION_NOT_FOCUSED
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_type_maps_and_others_are_refused() {
        assert_eq!(kind_of(sys::ActionType::POSE_INPUT), Ok(Kind::Pose));
        assert_eq!(
            kind_of(sys::ActionType::VIBRATION_OUTPUT),
            Ok(Kind::Vibration)
        );
        assert!(kind_of(sys::ActionType::from_raw(77)).is_err());
    }
}
