/* Admin: which therapist sees which patient (see common.js for test ids). */

import { api, byTestId, setText, setupPage } from "./common.js";

const PATIENT_RE = /^[a-z0-9][a-z0-9_-]{1,63}$/;

const tbody = byTestId(document, "users-table").querySelector("tbody");
const userSelect = byTestId(document, "assign-user");
const patientInput = byTestId(document, "assign-patient");
const datalist = document.getElementById("known-patients");

function showError(message) {
  const el = byTestId(document, "admin-error");
  el.hidden = !message;
  setText(el, message || "");
}

function userPath(username, patient) {
  return `/api/admin/users/${encodeURIComponent(username)}/patients/${encodeURIComponent(patient)}`;
}

async function load() {
  const data = await api("/api/admin/users");
  render(data);
}

function render(data) {
  const chosen = userSelect.value;
  userSelect.replaceChildren();
  for (const u of data.users) {
    const opt = document.createElement("option");
    opt.value = u.username;
    opt.textContent = `${u.username} (${u.role})`;
    userSelect.append(opt);
  }
  if (chosen) userSelect.value = chosen;
  datalist.replaceChildren();
  for (const p of data.patients) {
    const opt = document.createElement("option");
    opt.value = p;
    datalist.append(opt);
  }
  tbody.replaceChildren();
  for (const u of data.users) {
    const tr = document.createElement("tr");
    tr.dataset.testid = `user-${u.username}`;
    const name = document.createElement("td");
    name.textContent = u.username;
    const role = document.createElement("td");
    role.dataset.testid = "user-role";
    role.textContent = u.role === "admin" ? "admin (sees every patient)" : "therapist";
    const cell = document.createElement("td");
    const chips = document.createElement("div");
    chips.className = "patient-chips";
    chips.dataset.testid = "user-patients";
    for (const p of u.patients) {
      const chip = document.createElement("span");
      chip.className = "patient-chip";
      const label = document.createElement("span");
      label.textContent = p;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "button small";
      remove.dataset.testid = `unassign-${p}`;
      remove.setAttribute("aria-label", `Unassign ${p} from ${u.username}`);
      remove.textContent = "×";
      remove.addEventListener("click", () => change("DELETE", u.username, p));
      chip.append(label, remove);
      chips.append(chip);
    }
    if (!u.patients.length) {
      const none = document.createElement("span");
      none.className = "muted";
      none.textContent = u.role === "admin" ? "–" : "none";
      chips.append(none);
    }
    cell.append(chips);
    tr.append(name, role, cell);
    tbody.append(tr);
  }
}

async function change(method, username, patient) {
  showError(null);
  try {
    await api(userPath(username, patient), { method });
    await load();
  } catch (err) {
    if (err.status !== 401) showError(err.message);
  }
}

async function main() {
  try {
    const me = await setupPage();
    if (me.role !== "admin") {
      showError("Admins only.");
      return;
    }
    await load();
  } catch (err) {
    if (err.status !== 401) showError(`Could not load the users: ${err.message}`);
    return;
  }
  byTestId(document, "assign-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const patient = patientInput.value.trim();
    if (!PATIENT_RE.test(patient)) {
      showError("A patient code has 2-64 characters a-z, 0-9, '_' or '-'.");
      return;
    }
    await change("PUT", userSelect.value, patient);
    patientInput.value = "";
  });
}

main();
