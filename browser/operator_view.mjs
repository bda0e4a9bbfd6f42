// Drives a live Dagster UI the way an operator does, in Debian's chromium (never a downloaded browser).
// Run by search_migration_tests/test_browser.py: `node operator_view.mjs '<json config>'`.
//   phase "launch": the asset graph and checks are visible, post_search_documents shows its topic × week
//                   partitions, and a backfill of cfg.weeks × cfg.topics is launched from the Materialize dialog.
//   phase "after":  screenshots of the finished backfill and of the asset with its runbook link.
// Prints one JSON line (backfill id, screenshots). A failed step exits 1 naming the step and its screenshot.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const cfg = JSON.parse(process.argv[2]);
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
const result = { screenshots: [] };
let step = 'launch chromium';

async function shot(page, name) {
  const file = path.join(cfg.screenshots, `${name}.png`);
  await page.screenshot({ path: file });
  result.screenshots.push(file);
}

async function visible(page, text) {
  await page.getByText(text, { exact: true }).first().waitFor({ state: 'visible' });
}

async function assetGraph(page) {
  step = 'open the asset graph';
  await page.goto(`${cfg.base}/asset-groups`);
  await visible(page, 'backfill');
  step = 'expand all asset groups (graph context menu)';
  const canvas = page.viewportSize();
  const expand = page.getByRole('menuitem', { name: /Expand all groups/ });
  // a late first-visit dialog can swallow the menu: open it again until it shows, within the step's deadline
  const deadline = Date.now() + (cfg.stepTimeoutMs ?? 60000);
  while (!(await expand.isVisible())) {
    if (Date.now() > deadline) throw new Error('the graph context menu never showed "Expand all groups"');
    await page.mouse.click(canvas.width - 300, canvas.height - 60, { button: 'right' });
    await expand.waitFor({ timeout: 3000 }).catch(() => {});
  }
  await expand.click();
  for (const asset of cfg.assets) {
    step = `see asset ${asset} in the graph`;
    await visible(page, asset);
  }
  step = 'asset statuses loaded in the graph';
  await page.waitForFunction(() => !document.body.innerText.includes('Loading...'));  // real statuses in the picture
  await shot(page, 'asset-graph');
  for (const [asset, checks] of Object.entries(cfg.checks)) {
    step = `see the checks of ${asset}`;
    await page.goto(`${cfg.base}/assets/${asset}?view=checks`);
    for (const check of checks) await visible(page, check);
    await page.getByText(/^Gate: /).first().waitFor();  // the selected check explains itself
    if (asset === 'shadow_read_report') await shot(page, 'gates');
  }
}

async function launchBackfill(page) {
  step = 'open the partitions of post_search_documents';
  await page.goto(`${cfg.base}/assets/post_search_documents?view=partitions`);
  for (const topic of cfg.topics) {
    step = `see topic partition ${topic}`;
    await visible(page, topic);
  }
  for (const week of cfg.weeks) {  // the week list is long (and virtualized): filter it like an operator
    step = `see week partition ${week}`;
    await page.getByPlaceholder('Filter by time').fill(week);
    await visible(page, week);
  }
  await page.getByPlaceholder('Filter by time').fill('');
  await shot(page, 'partitions');

  step = 'open the Materialize dialog';
  await page.getByRole('button', { name: /Materialize/ }).first().click();
  const dialog = page.getByRole('dialog');
  await dialog.getByText('Launch runs to materialize').waitFor();
  step = 'select the weeks';
  const weeks = dialog.getByRole('textbox', { name: /ex: / });
  await weeks.fill(cfg.weeks.join(', '));
  await weeks.press('Enter');
  step = 'select the topics';
  await dialog.getByText('Select a partition or create one').click();
  for (const topic of cfg.topics) {
    await page.getByRole('menuitem', { name: new RegExp(`^${topic}`) }).click();
  }
  await page.keyboard.press('Escape');
  const n = cfg.weeks.length * cfg.topics.length;
  step = `see "${n} partitions" selected`;
  await dialog.getByText(`${n} partitions`, { exact: true }).waitFor();
  await shot(page, 'launch-backfill');

  step = 'launch the backfill';
  await dialog.getByRole('button', { name: 'Launch backfill' }).click();
  const toast = page.getByText(/Created backfill \w+/);
  await toast.waitFor();
  result.backfillId = (await toast.textContent()).match(/Created backfill (\w+)/)[1];
}

async function after(page) {
  step = 'see the backfill completed';
  await page.goto(`${cfg.base}/runs/b/${cfg.backfillId}`);
  await page.getByText('100% completed').first().waitFor();
  await shot(page, 'backfill-completed');

  step = 'see post_search_documents with owners, tags and its runbook link';
  await page.goto(`${cfg.base}/assets/post_search_documents`);
  await visible(page, 'search-migration');
  await visible(page, 'domain: backfill');
  // filter the metadata table to the runbook link, so the shot shows it beside description, owners and tags
  await page.getByPlaceholder('Filter metadata keys').fill('runbook');
  await page.getByText(/#runbook-backfill$/).first().waitFor();
  await shot(page, 'asset-overview');
}

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sm-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: cfg.chromium ?? '/usr/bin/chromium', headless: true, args: ARGS,
  viewport: { width: 1600, height: 1000 },
});
const page = context.pages()[0] ?? await context.newPage();
page.setDefaultTimeout(cfg.stepTimeoutMs ?? 60000);
// Dagster's first-visit newsletter dialog: the test marks it seen (setNuxSeen); should it show anyway,
// dismiss it without waiting on it to vanish (a wait that hung a click once).
await page.addLocatorHandler(page.getByRole('button', { name: 'Skip' }), (b) => b.click(), { noWaitAfter: true });
try {
  if (cfg.phase === 'launch') {
    await assetGraph(page);
    await launchBackfill(page);
  } else {
    await after(page);
  }
} catch (err) {
  const file = path.join(cfg.failures, `failed-${step.replace(/\W+/g, '-')}.png`);
  await page.screenshot({ path: file }).catch(() => {});
  console.error(`browser step failed: ${step}\n${err.message}\nscreenshot: ${file}`);
  process.exitCode = 1;
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
